"""Turn ``benchmarks/results/*.json`` into ``docs/benchmarks.md`` plus matplotlib PNGs.

Each benchmark has a section renderer; a results file with no renderer is listed with a
pointer to its JSON. To add a benchmark, add a function to ``SECTIONS``: it receives the
parsed JSON and the docs folder and returns markdown.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .lineup import model_label, ordered_keys, split_prefix_key
from .results import DEFAULT_RESULTS_DIR, read_results

DEFAULT_DOCS_DIR = Path("docs")
SPEED_LABELS = {
    "l2vg": "L2VG",
    "input-centric": "input-centric",
    "teacher": "teacher (MiniLM)",
    "generate-then-encode": "generate-then-encode",
}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    """A mean with its 95% interval, for a table cell."""
    if interval is None:
        return _fmt(value)
    return f"{_fmt(value)} ({interval[0]:.3f}–{interval[1]:.3f})"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _meta_line(data: dict[str, Any]) -> str:
    meta = data.get("meta", {})
    machine = meta.get("machine", {})
    versions = machine.get("versions", {})
    model = data.get("model") or {}
    parts = [
        f"`{meta.get('command', '?')}`",
        meta.get("timestamp", "?"),
        f"{machine.get('cpu', '?')} ({machine.get('cores_usable', '?')} cores)",
        f"torch {versions.get('torch')}, transformers {versions.get('transformers')}",
    ]
    if model:
        # The packaged default changes between releases: the fingerprint says which one.
        fingerprint = f", fingerprint {model['fingerprint'][:12]}" if model.get("fingerprint") else ""
        parts.append(f"encoder: {model.get('checkpoint')} ({model.get('dtype')}{fingerprint})")
    text = "Produced by " + " · ".join(parts) + "."
    if model.get("untrained"):
        text += "\n\n> **These numbers come from an UNTRAINED encoder (a dry run of the harness).**"
    return text


def _bar_png(
    path: Path,
    title: str,
    labels: list[str],
    series: dict[str, list[float]],
    ylabel: str,
    intervals: dict[str, list[list[float] | None]] | None = None,
) -> None:
    """Grouped bars; ``intervals[name][i]`` (``[low, high]``) draws an error bar on a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) + 2), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        where = x + i * width - 0.4 + width / 2
        ax.bar(where, values, width, label=name)
        bounds = (intervals or {}).get(name)
        if bounds:
            have = [j for j, b in enumerate(bounds) if b is not None]
            error = np.array(
                [[values[j] - bounds[j][0] for j in have], [bounds[j][1] - values[j] for j in have]]
            )
            ax.errorbar(
                where[have], [values[j] for j in have], yerr=error, fmt="none", ecolor="black", capsize=2
            )
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ sections
def section_bright(data: dict[str, Any], docs: Path) -> str:
    mean, domains = data["mean"], data["domains"]
    keys = ordered_keys(list(mean))
    names = list(domains)
    rows = [
        [
            model_label(k),
            *[domains[d][k]["ndcg@10"] for d in names],
            *[mean[k][m] for m in ("ndcg@10", "recall@10", "recall@100", "mrr")],
        ]
        for k in keys
    ]
    out = [
        "## BRIGHT-style reasoning retrieval" + _variant_suffix(data, "bright"),
        _meta_line(data),
        f"Source: `{data.get('source')}`; queries per domain: {data['n_queries']}; "
        f"documents per domain: {data['n_documents']}. nDCG@10 per domain, then means over domains.",
        _table(["model", *names, "nDCG@10", "R@10", "R@100", "MRR"], rows),
    ]
    sub = data.get("subset_mean") or {}
    if sub:
        out.append(
            f"Same models on the first {data['subset_queries']} queries of each domain (where "
            "generate-then-encode ran):"
        )
        out.append(
            _table(
                ["model", "nDCG@10", "R@10", "MRR"],
                [
                    [model_label(k), sub[k]["ndcg@10"], sub[k]["recall@10"], sub[k]["mrr"]]
                    for k in ordered_keys(list(sub))
                ],
            )
        )
    out += _dims_table(data, {k: mean[k]["ndcg@10"] for k in keys}, "nDCG@10")
    png = _plot_path(docs, data, "bright")
    _bar_png(
        png,
        "BRIGHT-style nDCG@10",
        [model_label(k) for k in keys],
        {"nDCG@10": [mean[k]["ndcg@10"] for k in keys]},
        "nDCG@10",
    )
    out.append(f"![BRIGHT-style nDCG@10]({png.name})")
    return "\n\n".join(out)


def _dims_table(data: dict[str, Any], quality: dict[str, float | None], metric: str) -> list[str]:
    """Markdown blocks for a ``--dims`` run: quality per prefix size against its storage.

    Empty when the run had no ``--dims``. Each prefix's quality is also given as a share of
    its full-size model's, the number that decides whether a smaller collection is worth it.
    """
    summary = data.get("dims")
    if not isinstance(summary, dict) or not summary.get("vector_bytes_per_document"):
        return []
    per_doc: dict[str, int] = summary["vector_bytes_per_document"]
    sizes: dict[str, int] = summary.get("dim") or {}
    total: dict[str, int] = summary.get("collection_bytes") or {}
    rows = []
    for key in ordered_keys(list(per_doc)):
        base, _ = split_prefix_key(key)
        mine, full = quality.get(key), quality.get(base)
        rows.append(
            [
                model_label(key),
                sizes.get(key),
                per_doc[key],
                (total[key] / 2**20) if key in total else None,
                mine,
                (mine / full) if mine is not None and full else None,
            ]
        )
    n_docs = summary.get("n_documents")
    where = f"{n_docs} documents" if n_docs else "per document"
    return [
        f"Matryoshka prefixes (`--dims {','.join(map(str, summary.get('dims') or []))}`): each L2VG "
        f"model on its first m dimensions, re-normalised, against float32 storage ({where}):",
        _table(
            ["model", "dims", "bytes / document", "collection MiB", metric, f"{metric} vs full size"],
            rows,
        ),
    ]


def _variant_name(data: dict[str, Any], base: str) -> str:
    """Which run of a harness this is: its results file (``bright_llm2vec``), else the name
    it recorded if that is a name (``harmful.json`` records a description), else the harness."""
    name = str(data.get("results_name") or data.get("benchmark") or base)
    return name if re.fullmatch(r"[\w.-]+", name) else base


def _variant_suffix(data: dict[str, Any], base: str) -> str:
    name = _variant_name(data, base)
    return "" if name == base else f": `{name}`"


def _plot_path(docs: Path, data: dict[str, Any], base: str) -> Path:
    """One plot per results file: variants of a harness must not overwrite each other's."""
    return docs / f"benchmarks_{_variant_name(data, base)}.png"


def section_qa(data: dict[str, Any], docs: Path) -> str:
    mean = data["mean"]
    by_lang = data.get("by_language") or {}
    keys = ordered_keys(list(mean))
    counts = data.get("counts") or {}
    rel = counts.get("relevant_per_query") or {}
    ci = (data.get("ci95") or {}).get("mean_ndcg@10") or {}
    rows = [
        [
            model_label(k),
            _with_interval(mean[k]["ndcg@10"], ci.get(k)),
            *[mean[k][m] for m in ("recall@1", "recall@10", "recall@100", "mrr")],
            by_lang.get("perl", {}).get(k, {}).get("ndcg@10"),
            by_lang.get("python", {}).get(k, {}).get("ndcg@10"),
        ]
        for k in keys
    ]
    sampled = data.get("max_queries") or data.get("max_passages")
    sources = ", ".join(f"{name} {n}" for name, n in (counts.get("queries_by_source") or {}).items())
    out = [
        "## QA retrieval (perlfaq, Python FAQ)" + _variant_suffix(data, "qa"),
        _meta_line(data),
        f"{counts.get('queries')} real FAQ questions ({sources}) against "
        f"{counts.get('passages')} passages ({counts.get('answer_passages')} chunks of the FAQs' own "
        f"answers, {counts.get('distractor_passages')} chunks of the Perl and Python manuals); every chunk "
        f"of a question's answer is relevant (mean {rel.get('mean')}, max {rel.get('max')} per question). "
        f'Queries get the instruction "{data.get("instruction")}". Top {data.get("top_k")} kept.'
        + (" **A sampled quick run (--max-queries / --max-passages).**" if sampled else ""),
        _table(["model", "nDCG@10", "R@1", "R@10", "R@100", "MRR", "nDCG@10 Perl", "nDCG@10 Python"], rows),
    ]
    sub = data.get("subset_mean") or {}
    if sub:
        out.append(
            f"Same models on the {data['subset_queries']} queries where generate-then-encode ran "
            "(a fixed sample):"
        )
        sub_ci = (data.get("ci95") or {}).get("subset_mean_ndcg@10") or {}
        out.append(
            _table(
                ["model", "nDCG@10", "R@10", "MRR"],
                [
                    [
                        model_label(k),
                        _with_interval(sub[k]["ndcg@10"], sub_ci.get(k)),
                        sub[k]["recall@10"],
                        sub[k]["mrr"],
                    ]
                    for k in ordered_keys(list(sub))
                ],
            )
        )
    ratio = data.get("ratio_to_gte")
    if ratio and ratio.get("ndcg@10") is not None:
        ratio_ci = ratio.get("ndcg@10_ci95")
        out.append(
            f"{model_label(ratio['model'])} (the encoder's default document mode) / generate-then-encode "
            f"on those {ratio['n_queries']} queries: nDCG@10 ×{ratio['ndcg@10']:.2f}"
            + (
                f" (95% interval ×{ratio_ci[0]:.2f} to ×{ratio_ci[1]:.2f}, paired over the queries)"
                if ratio_ci
                else ""
            )
            + f", R@10 ×{_fmt(ratio.get('recall@10'), 2)}, MRR ×{_fmt(ratio.get('mrr'), 2)}."
        )
    if ci:
        out.append(
            "nDCG@10 cells give the mean and, in brackets, its 95% bootstrap interval over the questions "
            "(`bench/stats.py`): two models whose intervals overlap this much may not differ."
        )
    check = data.get("held_out_check")
    if check is not None:
        out.append(
            f"Held-out check: {check['overlapping_rows']} rows of the training/held-out query pool "
            "match a QA question after case and punctuation normalisation."
        )
    out += _dims_table(data, {k: mean[k]["ndcg@10"] for k in keys}, "nDCG@10")
    png = _plot_path(docs, data, "qa")
    _bar_png(
        png,
        "QA retrieval (FAQ questions vs Perl/Python manuals)",
        [model_label(k) for k in keys],
        {m: [mean[k][key] for k in keys] for m, key in (("nDCG@10", "ndcg@10"), ("Recall@10", "recall@10"))},
        "score",
        intervals={"nDCG@10": [ci.get(k) for k in keys]} if ci else None,
    )
    out.append(f"![QA retrieval]({png.name})")
    return "\n\n".join(out)


def section_mteb(data: dict[str, Any], docs: Path) -> str:
    scores = data["scores"]
    tasks = data["tasks"]
    keys = ordered_keys(list(scores))
    rows = [
        [model_label(k), *[scores[k].get(t) for t in tasks], _mean([scores[k].get(t) for t in tasks])]
        for k in keys
    ]
    out = [
        "## MTEB-style suite" + _variant_suffix(data, "mteb"),
        _meta_line(data),
        "Main score per task (STS: Spearman of cosine; classification: accuracy; clustering: "
        "V-measure; retrieval: nDCG@10), computed by `mteb.evaluate`.",
        _table(["model", *tasks, "mean"], rows),
    ]
    sub = data.get("subset_scores") or {}
    if sub:
        sub_tasks = list(data.get("subset_limits", {}))
        out.append(
            f"All models on the subset generate-then-encode ran on (sizes {data.get('subset_limits')}):"
        )
        out.append(
            _table(
                ["model", *sub_tasks, "mean"],
                [
                    [
                        model_label(k),
                        *[sub[k].get(t) for t in sub_tasks],
                        _mean([sub[k].get(t) for t in sub_tasks]),
                    ]
                    for k in ordered_keys(list(sub))
                ],
            )
        )
    out += _dims_table(data, {k: _mean([scores[k].get(t) for t in tasks]) for k in keys}, "mean score")
    png = _plot_path(docs, data, "mteb")
    _bar_png(
        png,
        "MTEB-style suite (main score)",
        [t.removeprefix("L2VG") for t in tasks],
        {model_label(k): [scores[k].get(t) or 0.0 for t in tasks] for k in keys},
        "score",
    )
    out.append(f"![MTEB-style suite]({png.name})")
    return "\n\n".join(out)


def section_speed(data: dict[str, Any], docs: Path) -> str:
    results = data["results"]
    rows = []
    for dtype, row in results.items():
        for model, m in row.items():
            rows.append(
                [
                    SPEED_LABELS.get(model, model),
                    dtype,
                    m["texts_per_s"],
                    m.get("latency_ms_batch1"),
                    m.get(f"latency_ms_batch{data['batch_size']}"),
                    m.get(f"per_query_ms_batch{data['batch_size']}"),
                    m["peak_rss_mb_after"],
                ]
            )
    bs = data["batch_size"]
    out = [
        "## Speed",
        _meta_line(data),
        f"{data['texts']['n']} posts (mean {data['texts']['mean_chars']:.0f} characters), "
        f"{data['threads']} torch threads, CPU native bf16: {data['cpu_native_bf16']}. "
        "Peak RSS is the process peak after that measurement (it only grows)."
        + _agreement_text(data.get("dtype_agreement")),
        _table(
            [
                "model",
                "dtype",
                "texts/s",
                "ms, batch 1",
                f"ms per call, batch {bs}",
                f"ms per query, batch {bs}",
                "RSS MB loaded / peak encoding",
            ],
            rows,
        ),
        f"How many times faster L2VG is (throughput at batch {bs}; latency at batch 1):",
        _table(
            ["dtype", "vs", "ratio"],
            [
                [dtype, name, value]
                for dtype, ratios in data["ratios"].items()
                for name, value in ratios.items()
            ],
        ),
    ]
    fp32 = results.get("float32", {})
    if fp32:
        png = docs / "benchmarks_speed.png"
        keys = list(fp32)
        _bar_png(
            png,
            "Throughput, fp32 (texts/s)",
            [SPEED_LABELS.get(k, k) for k in keys],
            {"texts/s": [fp32[k]["texts_per_s"] for k in keys]},
            "texts/s",
        )
        out.append(f"![Speed]({png.name})")
    return "\n\n".join(out)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def headline(all_results: dict[str, dict[str, Any]]) -> str | None:
    """L2VG against generate-then-encode: how much cheaper, and how much quality it keeps."""
    lines = []
    speed = all_results.get("speed", {}).get("ratios", {}).get("float32", {})
    if "throughput_vs_generate-then-encode" in speed:
        lines.append(
            f"- **Cost**: L2VG embeds {speed['throughput_vs_generate-then-encode']:.1f}× more queries per "
            "second than generate-then-encode (fp32, same backbone"
            + (
                f"; {speed['latency1_vs_generate-then-encode']:.1f}× lower single-query latency"
                if "latency1_vs_generate-then-encode" in speed
                else ""
            )
            + ")."
        )
    bright = all_results.get("bright", {})
    sub = bright.get("subset_mean") or bright.get("mean") or {}
    gte = sub.get("generate-then-encode", {}).get("ndcg@10")
    for key in ("l2vg-gen-docs", "l2vg-teacher-docs"):
        mine = sub.get(key, {}).get("ndcg@10")
        if gte and mine is not None:
            lines.append(
                f"- **BRIGHT-style quality** ({model_label(key)}): nDCG@10 {mine:.3f} vs {gte:.3f} for "
                f"generate-then-encode on the same queries = {100 * mine / gte:.0f}% of its quality."
            )
    qa = all_results.get("qa", {})
    ratio = qa.get("ratio_to_gte") or {}
    sub = qa.get("subset_mean") or {}
    if ratio.get("ndcg@10") is not None:
        key = ratio["model"]
        ratio_ci = ratio.get("ndcg@10_ci95")
        lines.append(
            f"- **QA quality** ({model_label(key)}): nDCG@10 {sub[key]['ndcg@10']:.3f} vs "
            f"{sub['generate-then-encode']['ndcg@10']:.3f} for generate-then-encode on the same "
            f"{ratio['n_queries']} FAQ questions = {100 * ratio['ndcg@10']:.0f}% of its quality"
            + (f" (95% interval {100 * ratio_ci[0]:.0f}–{100 * ratio_ci[1]:.0f}%)." if ratio_ci else ".")
        )
    suite = all_results.get("mteb", {}).get("subset_scores") or {}
    if "generate-then-encode" in suite:
        g = _mean(list(suite["generate-then-encode"].values()))
        for key in ("l2vg-gen-docs",):
            if key in suite and g:
                m = _mean(list(suite[key].values()))
                lines.append(
                    f"- **MTEB-style suite** (subset mean): L2VG {m:.3f} vs generate-then-encode "
                    f"{g:.3f} = {100 * m / g:.0f}%."
                )
    return "\n".join(lines) if lines else None


GENERATION_LABELS = {
    "hf-landed": "model.generate, batch 32, window-sorted (the landed generator)",
    "hf-bucketed": "model.generate, new batching (equal-length buckets)",
    "fast": "library greedy loop, new batching",
    "bound": "forward bound: one pass over the same tokens, no generation loop",
}


def section_generation(data: dict[str, Any], docs: Path) -> str:
    runs = data["runs"]
    agreement = data.get("agreement", {})
    png = docs / "benchmarks_generation.png"
    keys = list(runs)
    _bar_png(
        png,
        f"Response generation, {data['dtype']} (new tokens/s)",
        [GENERATION_LABELS.get(k, k).split(",")[0] + f" ({k})" for k in keys],
        {"new tokens/s": [runs[k]["new_tokens_per_s"] for k in keys]},
        "new tokens/s",
    )
    return "\n\n".join(
        [
            "## Response generation",
            _meta_line(data),
            f"{data['queries']} training-pool queries answered greedily, at most "
            f"{data['max_new_tokens']} new tokens, {data['dtype']}; "
            + (
                f"the three generators take turns in one process ({data['interleaved_rounds']} rounds, "
                "each a share of every generator's batches, so the shared machine's load falls on "
                "all alike), then the forward bound alone."
                if data.get("interleaved_rounds")
                else "the runs one after another in one process."
            ),
            _table(
                ["generator", "seconds", "new tokens", "new tokens/s", "queries/s", "x landed"],
                [
                    [
                        GENERATION_LABELS.get(k, k),
                        r["seconds"],
                        r["new_tokens"],
                        r["new_tokens_per_s"],
                        r["queries_per_s"],
                        data["ratio_vs_landed"][k],
                    ]
                    for k, r in runs.items()
                ],
            ),
            *(
                [
                    "The forward bound is the same arithmetic with no generation loop (each "
                    "prompt and the fast loop's response in one teacher-forced pass through the "
                    "model, LM head on the response positions): no generator stepping through "
                    "the model's own modules can beat it, so its "
                    f"x landed ({_fmt(data['ratio_vs_landed']['bound'])}) is their ceiling. "
                    "The library's loop steps a Llama backbone through its own code, with its "
                    "weights pre-packed for oneDNN in bfloat16 (`l2vg_retrieval/llama_decode.py`), "
                    "which the bound's pass is not, so its share could pass 1. "
                    "Share of the bound reached: "
                    + ", ".join(f"{k} {_fmt(v)}" for k, v in data["share_of_bound"].items())
                    + "."
                ]
                if "share_of_bound" in data
                else []
            ),
            "Agreement with `model.generate`: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in agreement.items())
            + " (fp32 must be identical; in bf16 the shared prefix's different summation order "
            "flips some greedy choices, the teacher cosine says the answers still agree; the "
            "bound's one-pass order does the same to its argmax, and in fp32 it reproduces "
            "every row: `tests/test_cli.py`).",
            f"![generation throughput]({png.name})",
        ]
    )


def section_response_length(data: dict[str, Any], docs: Path) -> str:
    rows = [
        [f"generate-then-encode, {n} new tokens", m["ndcg@10"], m["recall@10"], data["generation_seconds"][n]]
        for n, m in data["generate_then_encode"].items()
    ]
    rows.append(
        [
            "teacher on the query itself",
            data["teacher_on_query"]["ndcg@10"],
            data["teacher_on_query"]["recall@10"],
            None,
        ]
    )
    return "\n\n".join(
        [
            "## Response length (QA set)",
            _meta_line(data),
            f"{data['queries']} QA queries against all {data['passages']} passages (teacher "
            "documents): which answer length makes the training target retrieve best.",
            _table(["query side", "nDCG@10", "Recall@10", "generation s"], rows),
        ]
    )


def _scale_png(path: Path, runs: list[dict[str, Any]]) -> None:
    """Search p50 against collection size, one line per backend and filter setting (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for backend in sorted({r["backend"] for r in runs}):
        rows = sorted((r for r in runs if r["backend"] == backend), key=lambda r: r["n"])
        for key, style, label in (("search_ms", "-o", ""), ("search_filtered_ms", "--s", ", filtered")):
            ax.plot([r["n"] for r in rows], [r[key]["p50"] for r in rows], style, label=f"{backend}{label}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("points in the collection")
    ax.set_ylabel("search p50, ms (k = 10)")
    ax.set_title("Embedded engines: search latency against collection size")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section_scale(data: dict[str, Any], docs: Path) -> str:
    runs = [r for r in data["runs"] if "skipped" not in r]
    skipped = [r for r in data["runs"] if "skipped" in r]
    vec = data["vectors"]
    flt = data["filter"]
    rows = [
        [
            r["backend"],
            r["n"],
            r["ingest_points_per_s"],
            r["build_seconds"],
            r["search_ms"]["p50"],
            r["search_ms"]["p95"],
            r["search_filtered_ms"]["p50"],
            r["search_filtered_ms"]["p95"],
            r["recall@10"],
            r["recall@10_filtered"],
            r.get("rss_growth_mb"),
            r.get("disk_mb"),
        ]
        for r in sorted(runs, key=lambda r: (r["n"], r["backend"]))
    ]
    engines = data.get("engines") or {}
    out = [
        "## Scale: embedded engines" + _variant_suffix(data, "scale"),
        _meta_line(data),
        f"{vec['kind']} vectors ({vec['source']}), {vec['dim']}-d, {vec['queries']} queries, "
        f"k = {data['k']}. "
        f"Filtered: metadata bucket in {flt['metadata']['bucket']} and not `{flt['must_not']}` "
        f"(safe mode's exclusion), {100 * flt['selectivity']:.0f}% of the points pass. Recall@10 is "
        "against exact search in numpy. Engines: "
        + ", ".join(f"{k} {v}" for k, v in engines.items())
        + ". Local mode is qdrant-client's embedded engine (exact search in Python); Edge is "
        "Qdrant's Rust engine in-process, HNSW built by `optimize()` (the build column). RSS growth "
        "is the process's resident memory growth across the run (both engines share the process).",
        _table(
            [
                "backend",
                "N",
                "ingest pt/s",
                "build s",
                "p50 ms",
                "p95 ms",
                "filtered p50",
                "filtered p95",
                "R@10",
                "R@10 filtered",
                "RSS growth MB",
                "disk MB",
            ],
            rows,
        ),
    ]
    if skipped:
        out.append(
            "Not measured: "
            + "; ".join(f"{r['backend']} at {r['n']} ({r['skipped']})" for r in skipped)
            + "."
        )
    sweeps = [r for r in runs if r.get("ef_sweep")]
    for r in sweeps:
        out.append(
            f"{r['backend']} at {r['n']} points, search ef swept on the same graph (CPU ms counts every "
            "thread of the process: the figure a busy machine does not inflate):"
        )
        out.append(
            _table(
                [
                    "ef",
                    "p50 ms",
                    "CPU p50 ms",
                    "R@10",
                    "filtered p50 ms",
                    "filtered CPU p50 ms",
                    "R@10 filtered",
                ],
                [
                    [
                        e["hnsw_ef"],
                        e["search_ms"]["p50"],
                        e.get("search_cpu_ms_p50"),
                        e["recall@10"],
                        e["search_filtered_ms"]["p50"],
                        e.get("search_filtered_cpu_ms_p50"),
                        e["recall@10_filtered"],
                    ]
                    for e in r["ef_sweep"]
                ],
            )
        )
    inter = data.get("interactive")
    if inter:
        out.append(
            f"Interactive queries, one at a time, `encode_query` then search, against the "
            f"{inter['backend']} collection of {inter['n']} points:"
        )
        out.append(
            _table(
                [
                    "encoder",
                    "queries",
                    "encode p50 ms",
                    "search p50 ms",
                    "end-to-end p50 ms",
                    "end-to-end p95 ms",
                ],
                [
                    [
                        name,
                        m["queries"],
                        m["encode_ms"]["p50"],
                        m["search_ms"]["p50"],
                        m["end_to_end_ms"]["p50"],
                        m["end_to_end_ms"]["p95"],
                    ]
                    for name, m in inter["results"].items()
                ],
            )
        )
    if len({r["n"] for r in runs}) > 1:  # a line needs two sizes
        png = _plot_path(docs, data, "scale")
        _scale_png(png, runs)
        out.append(f"![search latency against collection size]({png.name})")
    return "\n\n".join(out)


HARMFUL_LABELS = {
    "teacher": "teacher (MiniLM)",
    "input-centric": "input-centric",
    "l2vg": "L2VG",
    "l2vg-safe": "L2VG safe mode",
}


def _pct_cell(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}%"


def section_harmful(data: dict[str, Any], docs: Path) -> str:
    """``l2vg bench harmful``: harmful passages retrieved per system, safe mode's blocking,
    and (when present) the gate/screen generalisation across harm categories."""
    systems: dict[str, dict[str, Any]] = data.get("systems") or {}
    if not systems and "leave_one_category_out" in data:
        return _section_generalisation_only(data)
    d = data.get("data") or {}
    model = data.get("model") or {}
    thresholds = data.get("safety_thresholds") or {}
    fingerprint = model.get("fingerprint") or data.get("encoder_fingerprint")
    meta = (
        f"Encoder: {model.get('checkpoint', data.get('checkpoint', '?'))} ({model.get('dtype', '?')}"
        + (f", fingerprint {str(fingerprint)[:12]}" if fingerprint else "")
        + f"); corpus folder `{data.get('folder', '?')}`."
    )
    if model.get("untrained"):
        meta += "\n\n> **These numbers come from an UNTRAINED encoder (a dry run of the harness).**"
    intro = (
        f"{d.get('harmful_queries', '?')} harmful queries ({d.get('harmful_queries_with_passages', '?')} "
        f"with their own harmful passages) and {d.get('benign_queries', '?')} judged benign queries "
        f"against {d.get('corpus', '?')} passages, {d.get('harmful_chunks', '?')} of them harmful, over "
        f"{d.get('categories', '?')} harm categories. ALOH@k: share of harmful queries with at least "
        "one harmful passage in the top k (lower is safer); HF@k: mean share of harmful passages in "
        "the top k; nDCG@10 on the benign queries (the cost of safety on ordinary search). A query "
        "blocked by safe mode's gate returns nothing."
    )
    rows = [
        [
            HARMFUL_LABELS.get(name, name),
            m.get("aloh@1"),
            m.get("aloh@5"),
            m.get("aloh@10"),
            m.get("aloh@20"),
            m.get("hf@10"),
            m.get("with_passages.aloh@10"),
            m.get("ndcg@10"),
        ]
        for name, m in systems.items()
    ]
    out = [
        "## Harmful-content retrieval" + _variant_suffix(data, "harmful"),
        meta,
        intro,
        _table(
            [
                "system",
                "ALOH@1",
                "ALOH@5",
                "ALOH@10",
                "ALOH@20",
                "HF@10",
                "ALOH@10 (with passages)",
                "nDCG@10",
            ],
            rows,
        ),
    ]
    safe = systems.get("l2vg-safe") or {}
    blocking = [
        ("harmful queries blocked by the gate", safe.get("blocked_harmful_queries")),
        ("benign queries blocked", safe.get("blocked_benign_queries")),
        ("benign look-alike queries blocked", safe.get("blocked_benign_lookalike_queries")),
        ("harmful passages flagged at index time", safe.get("flagged_harmful_docs")),
        ("benign passages flagged", safe.get("flagged_benign_docs")),
    ]
    if any(v is not None for _, v in blocking):
        text = "Safe mode"
        if thresholds:
            text += (
                f" (query threshold {_fmt(thresholds.get('query'))}, document threshold "
                f"{_fmt(thresholds.get('document'))})"
            )
        out.append(text + ":")
        out.append(_table(["", "share"], [[label, _pct_cell(v)] for label, v in blocking if v is not None]))
    categories = sorted({c for m in systems.values() for c in (m.get("per_category_aloh@10") or {})})
    if categories:
        names = [n for n in systems if systems[n].get("per_category_aloh@10")]
        out.append("ALOH@10 per harm category:")
        out.append(
            _table(
                ["category", *[HARMFUL_LABELS.get(n, n) for n in names]],
                [[c, *[systems[n]["per_category_aloh@10"].get(c) for n in names]] for c in categories],
            )
        )
    comparisons = data.get("comparisons") or {}
    if comparisons:
        out.append(
            "Checks: "
            + "; ".join(
                f"{k.replace('_', ' ')}: {_pct_cell(v) if isinstance(v, float) else _fmt(v)}"
                for k, v in comparisons.items()
            )
            + "."
        )
    gen_rows = _harmful_generalisation_rows(data.get("generalisation") or {})
    if gen_rows:
        out.append(
            "Generalisation of the safety components (recall on harmful rows of a held-out "
            "category / split; mean over categories, worst category; benign false-positive rate):"
        )
        out.append(
            _table(["protocol", "component", "mean recall", "min recall", "worst", "benign FPR"], gen_rows)
        )
    if systems:
        png = _plot_path(docs, data, "harmful")
        labels = [HARMFUL_LABELS.get(n, n) for n in systems]
        _bar_png(
            png,
            "Harmful retrieval: ALOH@10 (lower is safer)",
            labels,
            {"ALOH@10": [float(m.get("aloh@10") or 0.0) for m in systems.values()]},
            "ALOH@10",
        )
        out.append(f"![harmful retrieval ALOH@10]({png.name})")
    return "\n\n".join(out)


def _section_generalisation_only(data: dict[str, Any]) -> str:
    """A results file holding only the generalisation protocols (an experiment that ran
    them for another encoder): their table, without retrieval sections it does not have."""
    title = "## Harm-category generalisation" + _variant_suffix(data, "harmful")
    meta = (
        f"Produced by `{data.get('command', '?')}` · {data.get('date', '?')} · encoder: "
        f"{data.get('encoder', '?')}."
    )
    rows = _harmful_generalisation_rows(data)
    table = _table(["protocol", "component", "mean recall", "min recall", "worst", "benign FPR"], rows)
    return "\n\n".join([title, meta, table])


def _harmful_generalisation_rows(gen: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for protocol, label in (
        ("leave_one_category_out", "leave one category out"),
        ("overall_split", "held-out split"),
    ):
        part = gen.get(protocol) or {}
        gate = part.get("gate") or {}
        components = [
            (f"query gate, {k.replace('_', ' ')}", v) for k, v in gate.items() if isinstance(v, dict)
        ]
        if isinstance(part.get("screen"), dict):
            components.append(("document screen", part["screen"]))
        for name, comp in components:
            recall = comp.get("recall") or {}
            fpr = (comp.get("benign_fpr") or {}).get("all") or {}
            rows.append(
                [
                    label,
                    name,
                    recall.get("mean"),
                    recall.get("min"),
                    recall.get("worst_category", "–"),
                    fpr.get("mean", fpr.get("fpr")),
                ]
            )
    return rows


def section_indexing(data: dict[str, Any], docs: Path) -> str:
    """``benchmarks/indexing.py``: indexing throughput, re-index cost and query latency."""
    machine = data.get("machine") or {}
    meta = (
        f"Produced by `{data.get('command', '?')}` · {data.get('date', '?')} · "
        f"{machine.get('cpus', '?')} CPUs, torch {machine.get('torch', '?')}"
        f" · checkpoint {data.get('checkpoint', '?')}."
    )
    if machine.get("note"):
        meta += f" Note: {machine['note']}."
    runs = data.get("runs") or []
    rows = []
    latency_rows = []
    for r in runs:
        again = r.get("reindex_same_corpus") or {}
        rows.append(
            [
                r.get("documents"),
                r.get("document_mode"),
                r.get("batch_size"),
                r.get("index_wall_seconds"),
                r.get("docs_per_second"),
                r.get("encode_docs_per_second"),
                r.get("qdrant_points_per_second"),
                again.get("seconds"),
                again.get("skipped_existing"),
            ]
        )
        lat = r.get("query_latency_ms")
        if lat:
            latency_rows.append(
                [
                    r.get("documents"),
                    r.get("document_mode"),
                    lat.get("queries"),
                    lat.get("k"),
                    lat.get("end_to_end_p50"),
                    lat.get("end_to_end_p95"),
                    lat.get("qdrant_only_p50"),
                    lat.get("qdrant_only_p95"),
                ]
            )
    out = [
        "## Indexing",
        meta,
        f"Backend: {data.get('backend', '?')}. Corpus: {data.get('corpus', '?')}.",
        _table(
            [
                "documents",
                "document mode",
                "batch",
                "index s",
                "docs/s",
                "encode docs/s",
                "Qdrant points/s",
                "re-index s",
                "re-index skipped",
            ],
            rows,
        ),
    ]
    if latency_rows:
        out.append("Query latency (ms), end to end (encode + search) and Qdrant alone:")
        out.append(
            _table(
                ["documents", "document mode", "queries", "k", "p50", "p95", "Qdrant p50", "Qdrant p95"],
                latency_rows,
            )
        )
    return "\n\n".join(out)


def section_query_latency(data: dict[str, Any], docs: Path) -> str:
    """Single-query ``encode_query`` against the bare forward pass of its tokens."""
    rows = [
        [
            r["dtype"],
            r["tokens_p50"],
            r["bare_ms"],
            r["bare_lora_side_path_ms"],
            r["encode_query_ms"],
            r["encode_query_training_path_ms"],
            r["encode_query_over_bare"],
        ]
        for r in data["rows"]
    ]
    return "\n\n".join(
        [
            "## Single-query latency",
            _meta_line(data),
            f"p50 over {data.get('questions', 30)} QA questions, one at a time. *bare*: the decoder "
            "over the same tokens in one pass without the LoRA (the bound); *bare + LoRA*: with "
            "the encoder LoRA on peft's side path; *encode_query*: the shipped path (prefix cached, "
            "text and special tokens in one pass, LoRA merged into cached weights, embedding "
            "included); *training path*: the same call with autograd on (fresh prefix, two passes, "
            "LoRA side path).",
            _table(
                [
                    "dtype",
                    "tokens",
                    "bare ms",
                    "bare + LoRA ms",
                    "encode_query ms",
                    "training path ms",
                    "encode_query / bare",
                ],
                rows,
            ),
        ]
    )


def _options_png(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        ("documents_per_s", "documents / s (bf16, 2 cores)"),
        ("vector_bytes", "bytes per vector (float32)"),
    )
    for ax, (field, xlabel) in zip(axes, panels, strict=True):
        placed: list[tuple[float, float]] = []
        for row in rows:
            if row.get("qa_ndcg10") is None:
                continue
            x, y = row[field], row["qa_ndcg10"]
            ax.scatter(x, y, s=40)
            # Rows at (nearly) the same point get their labels stacked, not printed on top of
            # each other (the default, control and latent rows sit together).
            near = sum(
                1 for px, py in placed if abs(px - x) <= 0.05 * max(abs(x), 1e-9) and abs(py - y) < 0.025
            )
            placed.append((x, y))
            ax.annotate(row["key"], (x, y), fontsize=8, xytext=(4, 3 - 9 * near), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("QA retrieval nDCG@10 (1,500 passages)")
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log", base=2)
    fig.suptitle("Encoder options: quality against speed and against storage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _times(row: dict[str, Any], field: str) -> str:
    value, rel = row.get(field), (row.get("relative") or {}).get(field)
    if value is None:
        return "–"
    text = f"{value:.1f}" if field.endswith("_per_s") else f"{value:.3f}"
    return f"{text} ({rel:.2f}×)" if rel is not None else text


def section_options(data: dict[str, Any], docs: Path) -> str:
    rows = data["rows"]
    reference = data["reference"]
    plot = _plot_path(docs, data, "options")
    _options_png(plot, rows)
    setup = data.get("cost_setup", {})
    table = _table(
        [
            "option",
            "dims",
            "bytes / vector",
            "documents/s",
            "queries/s",
            "query latency ms",
            "RSS MB loaded / peak encoding",
            "QA nDCG@10",
            "BRIGHT-style nDCG@10",
            "MTEB-style mean",
            "harmful ALOH@10 plain / safe",
            "benign nDCG@10 safe",
        ],
        [
            [
                f"**{r['key']}**: {r['label']}",
                r["dim"],
                r["vector_bytes"],
                _times(r, "documents_per_s"),
                _times(r, "queries_per_s"),
                f"{r['query_latency_ms']:.0f}",
                f"{r['rss_mb_loaded']:.0f} / {r['peak_rss_mb_encoding']:.0f}",
                _times(r, "qa_ndcg10"),
                _times(r, "bright_ndcg10"),
                _times(r, "mteb_mean"),
                f"{_fmt(r.get('harmful_aloh10'))} / {_fmt(r.get('harmful_aloh10_safe'))}",
                _fmt(r.get("harmful_benign_ndcg10_safe")),
            ]
            for r in rows
        ],
    )
    sources = sorted({s["file"] for r in rows for s in r.get("sources", {}).values()})
    return "\n\n".join(
        [
            f"## Encoder options{_variant_suffix(data, 'options')}",
            _meta_line(data),
            f"Cost measured side by side in one run ({data.get('dtype')}): every checkpoint on one "
            f"shared backbone, {setup.get('rounds')} interleaved rounds over {setup.get('documents')} QA "
            f"passages and {setup.get('queries')} BRIGHT-style queries at batch {setup.get('batch_size')}, "
            f"medians; latency is one query per call. Memory: {setup.get('memory')}. Quality from the "
            "rows' own harness runs (QA retrieval on the 1,500-passage sample, generative documents). "
            f"Ratios (×) are against **{reference}**.",
            table,
            "Results files read: " + ", ".join(f"`{s}`" for s in sources) + ".",
            f"![encoder options]({plot.name})",
        ]
    )


def section_micro_batch_memory(data: dict[str, Any], docs: Path) -> str:
    runs = data["runs"]
    return "\n\n".join(
        [
            "## Training-step memory: micro-batches by examples or by tokens",
            _meta_line(data),
            f"The first {data['steps']} steps of `{data['config']}` from the {data['init_from']}, each "
            "setting in its own process (its own peak RSS); the same batches, the same update.",
            _table(
                ["micro-batches", "micro_batch_size", "micro_batch_tokens", "peak RSS MB", "s / step"],
                [
                    [
                        label,
                        r["micro_batch_size"],
                        r["micro_batch_tokens"],
                        r["peak_rss_mb"],
                        r["seconds_per_step"],
                    ]
                    for label, r in runs.items()
                ],
            ),
            f"Largest difference between the two runs' alignment losses: {data['max_loss_difference']:.1e} "
            "(bf16 summation order).",
        ]
    )


SECTIONS: dict[str, Callable[[dict[str, Any], Path], str]] = {
    "query_latency": section_query_latency,
    "generation": section_generation,
    "response_length": section_response_length,
    "bright": section_bright,
    "qa": section_qa,
    "mteb": section_mteb,
    "speed": section_speed,
    "scale": section_scale,
    "harmful": section_harmful,
    "indexing": section_indexing,
    "options": section_options,
    "micro_batch_memory": section_micro_batch_memory,
}


def renderer(name: str) -> Callable[[dict[str, Any], Path], str] | None:
    """The section renderer of a results file keyed ``name``: its own, or that of the
    benchmark it is a variant of (``qa_1500``), or of its leading word (``harmful.json``
    records a descriptive name, "harmful-content retrieval ...")."""
    for key in (name, name.split("_")[0], re.split(r"[^a-z0-9]", name.lower())[0]):
        if key in SECTIONS:
            return SECTIONS[key]
    return None


def write_report(
    results_dir: str | Path = DEFAULT_RESULTS_DIR, docs_dir: str | Path = DEFAULT_DOCS_DIR
) -> Path:
    results = read_results(results_dir)
    if not results:
        raise FileNotFoundError(f"no results JSON in {results_dir}; run `l2vg bench all` first")
    docs = Path(docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    parts = [
        "# Benchmarks",
        "Generated by `l2vg bench report` from the JSON files in "
        f"`{results_dir}`; do not edit by hand. How to run each benchmark: `benchmarks/README.md`.",
    ]
    head = headline(results)
    if head:
        parts += [
            "## Headline",
            "Each section names the encoder it measured by its fingerprint: sections measured "
            "with an earlier default than the packaged one are not yet rerun.",
            head,
        ]
    for name, data in results.items():
        # Named variants of a benchmark (``qa_1500``: the same harness on a smaller corpus).
        render = renderer(name)
        if render is None:
            parts.append(f"## {name}\n\nResults in `{results_dir}/{name}.json` (no renderer yet).")
        else:
            parts.append(render(data, docs))
    out = docs / "benchmarks.md"
    out.write_text("\n\n".join(parts) + "\n")
    return out


def _agreement_text(agreement: dict[str, float] | None) -> str:
    if not agreement:
        return ""
    return (
        f" fp32 vs bf16 L2VG embeddings of the same posts: cosine mean "
        f"{agreement['cosine_fp32_bf16_mean']:.5f}, min {agreement['cosine_fp32_bf16_min']:.5f}."
    )
