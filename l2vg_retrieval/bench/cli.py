"""`l2vg bench {bright,qa,mteb,speed,report,all}`: run the harnesses, write JSON, build the docs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .results import DEFAULT_RESULTS_DIR

console = Console(stderr=True)
bench_app = typer.Typer(
    name="bench",
    help="Benchmarks: BRIGHT-style reasoning retrieval, FAQ question answering, an MTEB-style suite, "
    "speed, and the report.",
    no_args_is_help=True,
)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="checkpoint folder (default: the packaged trained encoder)"),
]
UntrainedOpt = Annotated[
    bool, typer.Option("--untrained", help="use an untrained encoder (dry run of the harness, not a result)")
]
DtypeOpt = Annotated[str, typer.Option(help="float32 | bfloat16 | auto")]
ModelsOpt = Annotated[
    str,
    typer.Option(
        "--models",
        help="comma list from bm25, teacher, input-centric, generate-then-encode, l2vg-gen-docs, "
        "l2vg-teacher-docs; or 'all'",
    ),
]
OutDirOpt = Annotated[Path, typer.Option("--out-dir", help="where results JSON are written")]
GteTokensOpt = Annotated[
    int, typer.Option("--gte-max-new-tokens", min=1, max=1024, help="answer length for generate-then-encode")
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, max=1024)]
NameOpt = Annotated[str, typer.Option(help="results file name (without .json)")]
DimsOpt = Annotated[
    str | None,
    typer.Option(
        "--dims",
        help="also score each L2VG model on its first m dimensions, for each m of a comma list "
        "(e.g. 256,128,64): reuses the full-size vectors, no second encoding",
    ),
]


def _fail(message: str, code: int = 2) -> None:
    from ..cli import fail

    fail(message, code)


def _load(model: str | None, untrained: bool, dtype: str) -> Any:
    from ..backbones import MissingAssetError
    from ..cli import EXIT_MISMATCH, EXIT_RUNTIME
    from ..encoder import CheckpointError
    from .lineup import load_l2vg

    try:
        return load_l2vg(model, untrained=untrained, dtype=dtype)
    except CheckpointError as exc:
        hint = (
            "" if model else " (the packaged checkpoint may not be trained yet; --untrained does a dry run)"
        )
        _fail(f"{exc}{hint}", EXIT_MISMATCH)
    except MissingAssetError as exc:  # the backbone/teacher it names is not installed here
        _fail(str(exc), EXIT_RUNTIME)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    raise AssertionError("unreachable")


def _models(spec: str) -> list[str]:
    from .lineup import parse_models

    try:
        return parse_models(spec)
    except ValueError as exc:
        _fail(str(exc))
    raise AssertionError("unreachable")


def _dims(spec: str | None, keys: list[str]) -> list[int]:
    """``--dims`` checked before the model loads (syntax, an L2VG model to cut); the sizes
    are checked against the encoder's dimension in :func:`_retrievers`."""
    from .lineup import check_dims_request, parse_dims

    try:
        dims = parse_dims(spec)
        check_dims_request(keys, dims)
        return dims
    except ValueError as exc:
        _fail(str(exc))
    raise AssertionError("unreachable")


def _retrievers(l2vg: Any, models: list[str], *, dims: list[int] | None, **options: Any) -> Any:
    from .lineup import DimsError, build_retrievers

    try:
        return build_retrievers(l2vg, models, dims=dims, **options)
    except DimsError as exc:  # a size larger than the encoder's output: bad input, not a crash
        _fail(str(exc))
    raise AssertionError("unreachable")


def _step(label: str) -> Any:
    def report(model: str, where: str) -> None:
        console.print(f"[cyan]{label}[/cyan] {model} · {where}")

    return report


def _run_bright(
    l2vg: Any,
    *,
    model: str | None,
    untrained: bool,
    models: list[str],
    source: str,
    domains: list[str] | None,
    max_queries: int | None,
    gte_queries: int,
    long_documents: bool,
    gte_max_new_tokens: int,
    batch_size: int,
    out_dir: Path,
    name: str,
    dims: list[int] | None = None,
) -> Path:
    from .bright import BrightFormatError, load_source, run_bright
    from .lineup import describe_l2vg, dims_summary
    from .results import write_results

    try:
        data = load_source(source, domains, long_documents=long_documents)
    except BrightFormatError as exc:
        _fail(str(exc))
    retrievers = _retrievers(
        l2vg, models, dims=dims, gte_max_new_tokens=gte_max_new_tokens, batch_size=batch_size
    )
    start = time.perf_counter()
    result = run_bright(
        data,
        retrievers,
        max_queries=max_queries,
        subset_queries=gte_queries if gte_queries > 0 and "generate-then-encode" in models else None,
        on_step=_step("bright"),
    )
    payload = {
        "model": describe_l2vg(l2vg, model, untrained) if l2vg is not None else None,
        "source": source,
        "long_documents": long_documents,
        "models": models,
        "gte_max_new_tokens": gte_max_new_tokens,
        "wall_seconds": round(time.perf_counter() - start, 1),
        **result,
        # Quality per m sits in "mean" under the prefix keys; this is the storage side.
        "dims": dims_summary(retrievers, dims or [], n_documents=sum(len(d.documents) for d in data)),
    }
    path = write_results(name, payload, out_dir)
    for key, m in result["mean"].items():
        console.print(
            f"  {key:22s} nDCG@10 {m['ndcg@10']:.3f}  R@10 {m['recall@10']:.3f}  MRR {m['mrr']:.3f}"
        )
    console.print(f"wrote {path}")
    return path


@bench_app.command()
def bright(
    model: ModelOpt = None,
    untrained: UntrainedOpt = False,
    dtype: DtypeOpt = "float32",
    models: ModelsOpt = "all",
    source: Annotated[
        str,
        typer.Option(
            help="'offline' (packaged set), 'hub' (xlangai/BRIGHT, online) or a BRIGHT-format folder"
        ),
    ] = "offline",
    domain: Annotated[
        list[str] | None, typer.Option("--domain", help="domain(s) to run (default: all)")
    ] = None,
    max_queries: Annotated[int | None, typer.Option(min=1, help="first N queries per domain")] = None,
    gte_queries: Annotated[
        int, typer.Option(min=0, help="generate-then-encode runs on the first N queries per domain (0: all)")
    ] = 4,
    long_documents: Annotated[bool, typer.Option(help="use BRIGHT's long-document corpus")] = False,
    gte_max_new_tokens: GteTokensOpt = 64,
    batch_size: BatchOpt = 16,
    out_dir: OutDirOpt = DEFAULT_RESULTS_DIR,
    name: NameOpt = "bright",
    dims: DimsOpt = None,
) -> None:
    """BRIGHT-style reasoning retrieval: nDCG@10, Recall@{10,100}, MRR for the whole lineup."""
    keys = _models(models)
    sizes = _dims(dims, keys)
    # BM25 alone needs no model: the lexical sanity check runs in seconds.
    l2vg = _load(model, untrained, dtype) if set(keys) - {"bm25"} else None
    _run_bright(
        l2vg,
        model=model,
        untrained=untrained,
        models=keys,
        source=source,
        domains=domain,
        max_queries=max_queries,
        gte_queries=gte_queries,
        long_documents=long_documents,
        gte_max_new_tokens=gte_max_new_tokens,
        batch_size=batch_size,
        out_dir=out_dir,
        name=name,
        dims=sizes,
    )


def _ci_text(ci: list[float] | None) -> str:
    return f" [95% {ci[0]:.3f}-{ci[1]:.3f}]" if ci else ""


def _run_qa(
    l2vg: Any,
    *,
    model: str | None,
    untrained: bool,
    models: list[str],
    data: Path | None,
    max_queries: int | None,
    max_passages: int | None,
    gte_queries: int,
    gte_max_new_tokens: int,
    batch_size: int,
    out_dir: Path,
    name: str,
    dims: list[int] | None = None,
) -> Path:
    from ..config import DEFAULT_QUERY_INSTRUCTION
    from .lineup import describe_l2vg, dims_summary
    from .qa import held_out_check, load_and_select, ratio_to_gte, run_qa
    from .qa_data import QADataError, describe
    from .results import write_results

    try:
        full, qa = load_and_select(data, max_queries=max_queries, max_passages=max_passages)
    except QADataError as exc:
        _fail(str(exc))
    instruction = l2vg.config.query_instruction if l2vg is not None else DEFAULT_QUERY_INSTRUCTION
    retrievers = _retrievers(
        l2vg, models, dims=dims, gte_max_new_tokens=gte_max_new_tokens, batch_size=batch_size
    )
    start = time.perf_counter()
    result = run_qa(
        qa,
        retrievers,
        instruction=instruction,
        subset_queries=gte_queries if gte_queries > 0 and "generate-then-encode" in models else None,
        on_step=_step("qa"),
    )
    l2vg_key = None
    if l2vg is not None:
        l2vg_key = "l2vg-gen-docs" if l2vg.config.document_mode == "generative" else "l2vg-teacher-docs"
    payload = {
        "model": describe_l2vg(l2vg, model, untrained) if l2vg is not None else None,
        "data": str(data) if data else "packaged (l2vg_retrieval/data/qa_offline)",
        "full_set": describe(full.queries, full.passages),
        "max_queries": max_queries,
        "max_passages": max_passages,
        "models": models,
        "gte_max_new_tokens": gte_max_new_tokens,
        "default_l2vg": l2vg_key,
        "wall_seconds": round(time.perf_counter() - start, 1),
        **result,
        "ratio_to_gte": ratio_to_gte(result, l2vg_key) if l2vg_key else None,
        "held_out_check": held_out_check(full),
        "dims": dims_summary(retrievers, dims or [], n_documents=len(qa.passages)),
    }
    path = write_results(name, payload, out_dir)
    intervals = result["ci95"]["mean_ndcg@10"]
    for key, m in result["mean"].items():
        ci = intervals.get(key)
        console.print(
            f"  {key:22s} nDCG@10 {m['ndcg@10']:.3f}{_ci_text(ci)}  R@1 {m['recall@1']:.3f}  "
            f"R@10 {m['recall@10']:.3f}  R@100 {m['recall@100']:.3f}  MRR {m['mrr']:.3f}"
        )
    if payload["ratio_to_gte"] and payload["ratio_to_gte"]["ndcg@10"] is not None:
        console.print(
            f"  {l2vg_key} / generate-then-encode on {result['subset_queries']} queries: "
            f"nDCG@10 x{payload['ratio_to_gte']['ndcg@10']:.2f}"
            f"{_ci_text(payload['ratio_to_gte'].get('ndcg@10_ci95'))}"
        )
    check = payload["held_out_check"]
    if check and check["overlapping_rows"]:
        console.print(f"[red]{check['overlapping_rows']} QA questions are in the training query pool[/red]")
    console.print(f"wrote {path}")
    return path


@bench_app.command("qa")
def qa_cmd(
    model: ModelOpt = None,
    untrained: UntrainedOpt = False,
    dtype: DtypeOpt = "float32",
    models: ModelsOpt = "all",
    data: Annotated[
        Path | None,
        typer.Option(help="a QA set folder (queries.jsonl + corpus.jsonl[.gz]); default: the packaged set"),
    ] = None,
    max_queries: Annotated[int | None, typer.Option(min=1, help="a fixed sample of N queries")] = None,
    max_passages: Annotated[
        int | None,
        typer.Option(min=1, help="all relevant passages plus a fixed sample of distractors, N in total"),
    ] = None,
    gte_queries: Annotated[
        int, typer.Option(min=0, help="generate-then-encode runs on a fixed sample of N queries (0: all)")
    ] = 100,
    gte_max_new_tokens: GteTokensOpt = 64,
    batch_size: BatchOpt = 16,
    out_dir: OutDirOpt = DEFAULT_RESULTS_DIR,
    name: NameOpt = "qa",
    dims: DimsOpt = None,
) -> None:
    """FAQ question answering (perlfaq, Python FAQ) against the Perl and Python manuals:
    nDCG@10, Recall@{1,10,100}, MRR for the whole lineup."""
    keys = _models(models)
    sizes = _dims(dims, keys)
    l2vg = _load(model, untrained, dtype) if set(keys) - {"bm25"} else None
    _run_qa(
        l2vg,
        model=model,
        untrained=untrained,
        models=keys,
        data=data,
        max_queries=max_queries,
        max_passages=max_passages,
        gte_queries=gte_queries,
        gte_max_new_tokens=gte_max_new_tokens,
        batch_size=batch_size,
        out_dir=out_dir,
        name=name,
        dims=sizes,
    )


def _run_mteb(
    l2vg: Any,
    *,
    model: str | None,
    untrained: bool,
    models: list[str],
    tasks: list[str] | None,
    limit: int | None,
    gte_subset: bool,
    gte_max_new_tokens: int,
    batch_size: int,
    out_dir: Path,
    name: str,
    dims: list[int] | None = None,
) -> Path:
    from .lineup import describe_l2vg, dims_summary
    from .mteb_suite import DEFAULT_SUBSET_LIMITS, LOCAL_TASKS, run_suite
    from .results import write_results

    dense = [k for k in models if k != "bm25"]  # BM25 has no place in STS/classification
    retrievers = _retrievers(
        l2vg, dense, dims=dims, gte_max_new_tokens=gte_max_new_tokens, batch_size=batch_size
    )
    names = tasks or list(LOCAL_TASKS)
    subset = {k: v for k, v in DEFAULT_SUBSET_LIMITS.items() if k in names} if gte_subset else {}
    if limit:
        subset = {k: min(v, limit) for k, v in subset.items()}
    start = time.perf_counter()
    result = run_suite(
        retrievers,
        names,
        subset_limits=subset,
        subset_only=("generate-then-encode",) if gte_subset else (),
        limits=dict.fromkeys(names, limit) if limit else None,
        on_step=_step("mteb"),
    )
    payload = {
        "model": describe_l2vg(l2vg, model, untrained),
        "models": dense,
        "gte_max_new_tokens": gte_max_new_tokens,
        "wall_seconds": round(time.perf_counter() - start, 1),
        **result,
        # The suite has no single collection: bytes per document vector only.
        "dims": dims_summary(retrievers, dims or []),
    }
    path = write_results(name, payload, out_dir)
    for key, row in result["scores"].items():
        console.print(
            f"  {key:22s} " + "  ".join(f"{t.removeprefix('L2VG')} {v:.3f}" for t, v in row.items())
        )
    console.print(f"wrote {path}")
    return path


@bench_app.command("mteb")
def mteb_cmd(
    model: ModelOpt = None,
    untrained: UntrainedOpt = False,
    dtype: DtypeOpt = "float32",
    models: ModelsOpt = "all",
    task: Annotated[
        list[str] | None,
        typer.Option("--task", help="local task or any MTEB task name (online); default: the local suite"),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=2, help="cap every local task's size (quick look)")] = None,
    gte_subset: Annotated[
        bool, typer.Option(help="run generate-then-encode on the small subset only (else on everything)")
    ] = True,
    gte_max_new_tokens: GteTokensOpt = 64,
    batch_size: BatchOpt = 16,
    out_dir: OutDirOpt = DEFAULT_RESULTS_DIR,
    name: NameOpt = "mteb",
    dims: DimsOpt = None,
) -> None:
    """MTEB-style suite through mteb.evaluate: STS, classification, clustering, retrieval."""
    keys = _models(models)
    sizes = _dims(dims, keys)
    l2vg = _load(model, untrained, dtype)
    _run_mteb(
        l2vg,
        model=model,
        untrained=untrained,
        models=keys,
        tasks=task,
        limit=limit,
        gte_subset=gte_subset,
        gte_max_new_tokens=gte_max_new_tokens,
        batch_size=batch_size,
        out_dir=out_dir,
        name=name,
        dims=sizes,
    )


def _run_speed(
    l2vg: Any,
    *,
    model: str | None,
    untrained: bool,
    dtypes: str,
    n_texts: int,
    n_latency: int,
    gte_texts: int,
    gte_max_new_tokens: int,
    out_dir: Path,
    name: str,
) -> Path:
    from .lineup import describe_l2vg
    from .results import write_results
    from .speed import run_speed

    wanted = [d.strip() for d in dtypes.split(",") if d.strip()]
    bad = [d for d in wanted if d not in ("float32", "bfloat16")]
    if bad or not wanted:
        _fail(f"--dtypes takes float32 and/or bfloat16, got {dtypes!r}")
    described = describe_l2vg(l2vg, model, untrained)
    start = time.perf_counter()
    result = run_speed(
        l2vg,
        dtypes=wanted,
        n_texts=n_texts,
        n_latency=n_latency,
        gte_texts=gte_texts,
        gte_max_new_tokens=gte_max_new_tokens,
        on_step=_step("speed"),
    )
    payload = {"model": described, "wall_seconds": round(time.perf_counter() - start, 1), **result}
    path = write_results(name, payload, out_dir)
    for dtype_name, ratios in result["ratios"].items():
        console.print(f"  {dtype_name}: " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()))
    console.print(f"wrote {path}")
    return path


@bench_app.command()
def speed(
    model: ModelOpt = None,
    untrained: UntrainedOpt = False,
    dtypes: Annotated[str, typer.Option(help="comma list: float32,bfloat16")] = "float32,bfloat16",
    n_texts: Annotated[int, typer.Option(min=1, help="texts for the throughput run")] = 32,
    n_latency: Annotated[int, typer.Option(min=1, help="single-text calls for latency")] = 4,
    gte_texts: Annotated[int, typer.Option(min=1, help="texts generate-then-encode is timed on")] = 4,
    gte_max_new_tokens: GteTokensOpt = 64,
    out_dir: OutDirOpt = DEFAULT_RESULTS_DIR,
    name: NameOpt = "speed",
) -> None:
    """Texts/s and latency (batch 1 and 32), fp32 and bf16, peak RSS, and L2VG's speed ratios."""
    l2vg = _load(model, untrained, "float32")
    _run_speed(
        l2vg,
        model=model,
        untrained=untrained,
        dtypes=dtypes,
        n_texts=n_texts,
        n_latency=n_latency,
        gte_texts=gte_texts,
        gte_max_new_tokens=gte_max_new_tokens,
        out_dir=out_dir,
        name=name,
    )


@bench_app.command()
def report(
    results_dir: Annotated[Path, typer.Option(help="folder of results JSON")] = DEFAULT_RESULTS_DIR,
    docs_dir: Annotated[Path, typer.Option(help="where benchmarks.md and the PNGs go")] = Path("docs"),
) -> None:
    """Regenerate docs/benchmarks.md (tables + PNG plots) from the results JSON."""
    from .report import write_report

    try:
        path = write_report(results_dir, docs_dir)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"wrote {path}")


@bench_app.command("all")
def all_cmd(
    model: ModelOpt = None,
    untrained: UntrainedOpt = False,
    gte_max_new_tokens: GteTokensOpt = 64,
    out_dir: OutDirOpt = DEFAULT_RESULTS_DIR,
    docs_dir: Annotated[Path, typer.Option(help="where benchmarks.md and the PNGs go")] = Path("docs"),
) -> None:
    """bright, qa, mteb and speed with their defaults on one loaded model, then the report.

    (The harmful-content benchmark has its own command.) Speed runs last: it converts
    the shared backbone to bf16.
    """
    from .lineup import MODEL_KEYS

    l2vg = _load(model, untrained, "float32")
    common = {
        "model": model,
        "untrained": untrained,
        "gte_max_new_tokens": gte_max_new_tokens,
        "out_dir": out_dir,
    }
    _run_bright(
        l2vg,
        models=list(MODEL_KEYS),
        source="offline",
        domains=None,
        max_queries=None,
        gte_queries=4,
        long_documents=False,
        batch_size=16,
        name="bright",
        **common,
    )
    _run_qa(
        l2vg,
        models=list(MODEL_KEYS),
        data=None,
        max_queries=None,
        max_passages=None,
        gte_queries=100,
        batch_size=16,
        name="qa",
        **common,
    )
    _run_mteb(
        l2vg,
        models=list(MODEL_KEYS),
        tasks=None,
        limit=None,
        gte_subset=True,
        batch_size=16,
        name="mteb",
        **common,
    )
    _run_speed(l2vg, dtypes="float32,bfloat16", n_texts=32, n_latency=4, gte_texts=4, name="speed", **common)
    report(results_dir=out_dir, docs_dir=docs_dir)


# --- other benchmark commands -------------------------------------------------------
# The harmful-content benchmark lives in its own module and attaches `harmful` here.
from .harmful_cli import register as _register_harmful  # noqa: E402

_register_harmful(bench_app)

from .scale_cli import register as _register_scale  # noqa: E402

_register_scale(bench_app)


@bench_app.command("generation")
def generation_cmd(
    queries: Annotated[int, typer.Option(min=8, help="training-pool queries to answer")] = 1024,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=1024)] = 48,
    batch_size: Annotated[int, typer.Option(min=1, help="batch of the library's generator")] = 128,
    dtype: DtypeOpt = "auto",
    out_dir: OutDirOpt = DEFAULT_RESULTS_DIR,
    name: NameOpt = "generation",
) -> None:
    """Response generation: the library's greedy loop vs ``model.generate``, side by side."""
    from ..backbones import MissingAssetError, load_backbone
    from ..cli import EXIT_RUNTIME
    from ..runtime import resolve_dtype
    from ..teacher import TeacherEncoder
    from .generation import TRAIN_POOL, run_generation_benchmark, sample_queries
    from .results import write_results

    try:
        backbone = load_backbone("smollm2-135m-instruct")
        teacher = TeacherEncoder()
    except MissingAssetError as exc:
        _fail(str(exc), EXIT_RUNTIME)
    model = backbone.model.to(resolve_dtype(dtype, torch_device_cpu())).eval()
    result = run_generation_benchmark(
        model,
        backbone.tokenizer,
        teacher,
        sample_queries(TRAIN_POOL, queries),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        on_step=lambda step: console.print(f"[generation] {step}"),
    )
    path = write_results(name, result, out_dir)
    for key, run in result["runs"].items():
        console.print(
            f"  {key:12s} {run['new_tokens_per_s']:7.1f} new tokens/s  x{result['ratio_vs_landed'][key]:.2f}"
        )
    console.print(f"  agreement: {result['agreement']}")
    console.print(f"wrote {path}")


@bench_app.command("options")
def options_cmd(
    spec: Annotated[
        Path, typer.Argument(help="YAML list of rows (benchmarks/options.yaml)", exists=True, dir_okay=False)
    ] = Path("benchmarks/options.yaml"),
    results_dir: Annotated[
        Path, typer.Option(help="where the rows' results files are (their names are relative to it)")
    ] = DEFAULT_RESULTS_DIR,
    dtype: DtypeOpt = "bfloat16",
    rounds: Annotated[int, typer.Option(min=1, help="interleaved timing rounds")] = 3,
    out_dir: OutDirOpt = DEFAULT_RESULTS_DIR,
    name: NameOpt = "options",
) -> None:
    """Encoder options side by side: throughput, peak memory, vector bytes and every harness's quality."""
    from pydantic import ValidationError

    from ..cli import EXIT_MISMATCH
    from ..encoder import CheckpointError
    from .options import load_spec, run_options_benchmark
    from .results import write_results

    try:
        parsed = load_spec(spec)
    except (ValidationError, ValueError) as exc:
        _fail(f"{spec}: {exc}")
    try:
        result = run_options_benchmark(
            parsed,
            results_dir=results_dir,
            dtype=dtype,
            rounds=rounds,
            on_step=lambda step: console.print(f"[options] {step}"),
        )
    except CheckpointError as exc:  # a row's checkpoint is missing, corrupt or mismatched
        _fail(str(exc), EXIT_MISMATCH)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    path = write_results(name, result, out_dir)
    for row in result["rows"]:
        console.print(
            f"  {row['key']:14s} {row['documents_per_s']:6.1f} docs/s  "
            f"{row['peak_rss_mb_encoding']:7.0f} MB  QA {row.get('qa_ndcg10', float('nan')):.3f}"
        )
    console.print(f"wrote {path}")


def torch_device_cpu() -> Any:
    import torch

    return torch.device("cpu")


def register(app: typer.Typer) -> None:
    """Attach ``l2vg bench ...`` to the root ``l2vg`` app."""
    app.add_typer(bench_app, name="bench")
