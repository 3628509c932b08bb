"""QA retrieval: real FAQ questions against their written answers among thousands of
same-domain documentation passages (``l2vg bench qa``).

The data (``l2vg_retrieval/data/qa_offline``, built by :mod:`l2vg_retrieval.bench.qa_data`)
holds 522 questions from perlfaq, perlunifaq, the Python FAQ and a few question-headed
manual sections; each question's relevant passages are the chunks of its own answer (669
in all), and the corpus adds 4,638 chunks of the Perl and Python manuals. The questions
are held out of the training query pool (:func:`held_out_check` verifies it).

Scoring: every passage is scored for every query, the top 1000 are kept and nDCG@10 is the
primary metric, with Recall@{1,10,100} and MRR (:mod:`l2vg_retrieval.bench.metrics`).
Queries get the encoder's own query instruction (``config.query_instruction``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import evaluate_queries, mean_metrics
from .qa_data import QASet, describe, load_qa, pool_overlap, sample_order
from .stats import mean_ci, ratio_of_means_ci

TOP_K = 1000
K_VALUES = (1, 10, 100)
HEADLINE_METRICS = ("ndcg@10", "recall@1", "recall@10", "recall@100", "mrr")
PRIMARY = "ndcg@10"
DEFAULT_GTE_QUERIES = 100
DEFAULT_POOL_DIR = Path("data") / "queries"
POOL_FILES = ("queries.train.jsonl", "queries.heldout.jsonl")


LANGUAGES = ("perl", "python")


def language(source: str) -> str:
    """``perl`` for perlfaq/perlunifaq/perlman, ``python`` for pyfaq/pydocs, else ``other``."""
    if source.startswith("perl"):
        return "perl"
    return "python" if source.startswith("py") else "other"


def select(qa: QASet, *, max_queries: int | None = None, max_passages: int | None = None) -> QASet:
    """A deterministic smaller set for quick runs.

    ``max_queries`` keeps that many queries in a fixed pseudo-random order (so every FAQ is
    represented, not just the first file); ``max_passages`` keeps every relevant passage of
    the kept queries plus a fixed pseudo-random sample of the other passages up to that total
    (all relevant passages are kept even when they alone exceed it). File order is kept.
    """
    queries = qa.queries
    if max_queries is not None and max_queries < len(queries):
        keep = set(sample_order([q["id"] for q in queries])[:max_queries])
        queries = [q for q in queries if q["id"] in keep]
    passages = qa.passages
    if max_passages is not None and max_passages < len(passages):
        relevant = {r for q in queries for r in q["relevant"]}
        others = [p["id"] for p in passages if p["id"] not in relevant]
        extra = set(sample_order(others, salt="qa-passages")[: max(0, max_passages - len(relevant))])
        passages = [p for p in passages if p["id"] in relevant or p["id"] in extra]
    return QASet(list(queries), list(passages))


def subset_ids(queries: Sequence[dict[str, Any]], n: int) -> list[str]:
    """The generate-then-encode subset: the first ``n`` queries in the same fixed order that
    ``select`` uses, so a ``--max-queries`` run's subset lies inside its queries."""
    return sample_order([q["id"] for q in queries])[:n]


def _evaluate(
    scores: np.ndarray,
    queries: Sequence[dict[str, Any]],
    passage_ids: Sequence[str],
    top_k: int,
) -> dict[str, dict[str, float]]:
    """Metrics over all given queries and per language (``all``, ``perl``, ``python``)."""
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    keep = min(top_k, scores.shape[1])
    for row, query in zip(scores, queries, strict=True):
        top = np.argpartition(-row, keep - 1)[:keep]
        run[query["id"]] = {passage_ids[i]: float(row[i]) for i in top}
        qrels[query["id"]] = dict.fromkeys(query["relevant"], 1)
    # Each query's metrics once; the overall and per-language means are averages of them.
    per_query = evaluate_queries(run, qrels, k_values=K_VALUES)
    out: dict[str, Any] = {"all": mean_metrics(per_query)}
    for lang in LANGUAGES:
        ids = [q["id"] for q in queries if language(q.get("source", "")) == lang]
        if ids:
            out[lang] = mean_metrics({i: per_query[i] for i in ids})
    out["per_query"] = {qid: round(row[PRIMARY], 6) for qid, row in per_query.items()}
    return out


def run_qa(
    qa: QASet,
    retrievers: dict[str, Any],
    *,
    instruction: str | None,
    subset_queries: int | None = None,
    subset_only: Sequence[str] = ("generate-then-encode",),
    top_k: int = TOP_K,
    on_step: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Score every retriever on the QA set.

    Models in ``subset_only`` (generate-then-encode: one generation per query) run on the
    ``subset_queries`` subset only; every other model is scored on all queries and, from the
    same score matrix, on that subset too, which is the fair ground for quality ratios.
    """
    passage_ids = [p["id"] for p in qa.passages]
    passage_texts = [p["text"] for p in qa.passages]
    position = {q["id"]: i for i, q in enumerate(qa.queries)}
    chosen = set(subset_ids(qa.queries, subset_queries)) if subset_queries is not None else set()
    sub_queries = [q for q in qa.queries if q["id"] in chosen]
    full: dict[str, dict[str, Any]] = {}
    subset: dict[str, dict[str, float]] = {}
    subset_per_query: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for key, retriever in retrievers.items():
        start = time.perf_counter()
        only_subset = subset_queries is not None and key in subset_only
        queries = sub_queries if only_subset else qa.queries
        if on_step:
            on_step(key, f"{len(queries)} queries x {len(passage_ids)} passages")
        scores = np.asarray(
            retriever.score([q["text"] for q in queries], passage_texts, instruction=instruction),
            dtype=np.float64,
        )
        if scores.shape != (len(queries), len(passage_ids)):
            raise ValueError(
                f"{key} returned scores of shape {scores.shape}, expected {(len(queries), len(passage_ids))}"
            )
        if not only_subset:
            full[key] = _evaluate(scores, queries, passage_ids, top_k)
        if subset_queries is not None:
            rows = scores if only_subset else scores[[position[q["id"]] for q in sub_queries]]
            evaluated = _evaluate(rows, sub_queries, passage_ids, top_k)
            subset[key], subset_per_query[key] = evaluated["all"], evaluated["per_query"]
        seconds[key] = round(time.perf_counter() - start, 3)
    return {
        "mean": {k: v["all"] for k, v in full.items()},
        "by_language": {lang: {k: v[lang] for k, v in full.items() if lang in v} for lang in LANGUAGES},
        "subset_queries": len(sub_queries) if subset_queries is not None else None,
        "subset_ids": sorted(chosen),
        "subset_mean": subset,
        # nDCG@10 of every query, for intervals and paired comparisons between runs.
        f"per_query_{PRIMARY}": {k: v["per_query"] for k, v in full.items()},
        f"subset_per_query_{PRIMARY}": subset_per_query,
        "ci95": {
            f"mean_{PRIMARY}": {k: mean_ci(list(v["per_query"].values())) for k, v in full.items()},
            f"subset_mean_{PRIMARY}": {k: mean_ci(list(v.values())) for k, v in subset_per_query.items()},
        },
        "seconds": seconds,
        "counts": describe(qa.queries, qa.passages),
        "instruction": instruction,
        "top_k": top_k,
    }


def ratio_to_gte(result: dict[str, Any], l2vg_key: str) -> dict[str, Any] | None:
    """L2VG (``l2vg_key``, the encoder's default document mode) over generate-then-encode on
    the subset where both ran, per headline metric."""
    sub = result.get("subset_mean") or {}
    if l2vg_key not in sub or "generate-then-encode" not in sub:
        return None
    mine, gte = sub[l2vg_key], sub["generate-then-encode"]
    ratio: dict[str, Any] = {
        "model": l2vg_key,
        "n_queries": result.get("subset_queries"),
        **{m: (mine[m] / gte[m] if gte[m] else None) for m in HEADLINE_METRICS},
    }
    per_query = result.get(f"subset_per_query_{PRIMARY}") or {}
    if l2vg_key in per_query and "generate-then-encode" in per_query:
        ids = list(per_query["generate-then-encode"])
        # Paired: both systems' nDCG@10 of one query are resampled together.
        ratio[f"{PRIMARY}_ci95"] = ratio_of_means_ci(
            [per_query[l2vg_key][i] for i in ids], [per_query["generate-then-encode"][i] for i in ids]
        )
    return ratio


def held_out_check(qa: QASet, pool_dir: str | Path = DEFAULT_POOL_DIR) -> dict[str, Any] | None:
    """How many QA questions appear in the training/held-out query pool (normalised text).

    ``None`` when the pool files are not there (an installed package without the repo).
    """
    files = [Path(pool_dir) / name for name in POOL_FILES]
    if not all(f.is_file() for f in files):
        return None
    hits = pool_overlap([q["text"] for q in qa.queries], files)
    return {
        "pool_files": [str(f) for f in files],
        "overlapping_rows": len(hits),
        "examples": hits[:5],
    }


def load_and_select(
    folder: str | Path | None, *, max_queries: int | None, max_passages: int | None
) -> tuple[QASet, QASet]:
    """``(full set, selected set)``."""
    qa = load_qa(folder)
    return qa, select(qa, max_queries=max_queries, max_passages=max_passages)
