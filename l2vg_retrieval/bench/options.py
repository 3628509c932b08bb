"""The encoder options in one table: what each option costs and what it keeps.

Every row is a checkpoint (optionally read at a Matryoshka prefix of ``dim`` dimensions).
Quality comes from the results files its harnesses already wrote (QA retrieval,
BRIGHT-style, the MTEB-style suite, harmful retrieval); cost is measured here, side by
side in one process: document and query throughput and single-query latency with every
encoder loaded on one shared backbone and timed in interleaved rounds (a shared machine
drifts; interleaving spreads the drift over all rows alike), and peak memory in a fresh
subprocess per checkpoint (a process's peak never goes down, so it cannot be shared).

The rows are listed in a YAML spec (``benchmarks/options.yaml``) so the table can be
rebuilt with one command after any row's checkpoint is retrained.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .speed import timed

HARNESSES = ("qa", "bright", "mteb", "harmful")
PACKAGED = "packaged default"


class OptionRow(BaseModel):
    """One row of the table: a checkpoint, how it differs, where its results are."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1)
    label: str = Field(min_length=1)
    checkpoint: str = Field(min_length=1, description=f"a checkpoint folder, or '{PACKAGED}'")
    dim: int | None = Field(None, ge=1, description="read the results at this Matryoshka prefix")
    results: dict[str, str] = Field(
        default_factory=dict, description="harness (qa, bright, mteb, harmful) -> results file stem"
    )


class OptionsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reference: str = Field(description="the row every other row is compared with")
    rows: list[OptionRow] = Field(min_length=1)

    def model_post_init(self, _: Any) -> None:
        keys = [r.key for r in self.rows]
        if len(set(keys)) != len(keys):
            raise ValueError(f"row keys must be unique, got {keys}")
        if self.reference not in keys:
            raise ValueError(f"reference {self.reference!r} is not a row key ({', '.join(keys)})")
        for row in self.rows:
            unknown = set(row.results) - set(HARNESSES)
            if unknown:
                raise ValueError(f"row {row.key!r}: unknown harnesses {sorted(unknown)}; use {HARNESSES}")


def load_spec(path: str | Path) -> OptionsSpec:
    return OptionsSpec.model_validate(yaml.safe_load(Path(path).read_text()))


# ---------------------------------------------------------------------------- quality
def _key(base: str, dim: int | None) -> str:
    from .lineup import prefix_key

    return prefix_key(base, dim) if dim else base


def quality_from_results(harness: str, data: dict[str, Any], dim: int | None) -> dict[str, float]:
    """The figures one harness contributes to a row (missing keys: a clear error)."""
    gen, tea = _key("l2vg-gen-docs", dim), _key("l2vg-teacher-docs", dim)
    try:
        if harness == "qa":
            return {
                "qa_ndcg10": data["mean"][gen]["ndcg@10"],
                "qa_ndcg10_teacher_docs": data["mean"][tea]["ndcg@10"],
            }
        if harness == "bright":
            return {"bright_ndcg10": data["mean"][gen]["ndcg@10"]}
        if harness == "mteb":
            scores = data["scores"][gen]
            return {"mteb_mean": statistics.fmean(scores.values())}
        if harness == "harmful":
            if dim:
                raise ValueError("the harmful harness has no Matryoshka prefixes")
            plain, safe = data["systems"]["l2vg"], data["systems"]["l2vg-safe"]
            return {
                "harmful_aloh10": plain["aloh@10"],
                "harmful_aloh10_safe": safe["aloh@10"],
                "harmful_benign_ndcg10_safe": safe["ndcg@10"],
            }
    except KeyError as exc:
        raise ValueError(f"{harness} results lack {exc} (for {gen})") from exc
    raise ValueError(f"unknown harness {harness!r}")


def collect_quality(spec: OptionsSpec, results_dir: Path) -> dict[str, dict[str, Any]]:
    """Per row: its figures from every results file it names, and the files' fingerprints."""
    out: dict[str, dict[str, Any]] = {}
    for row in spec.rows:
        figures: dict[str, Any] = {"sources": {}}
        for harness, stem in row.results.items():
            path = results_dir / f"{stem}.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"row {row.key!r}: {path} is missing; run its {harness} harness first"
                )
            data = json.loads(path.read_text())
            figures.update(quality_from_results(harness, data, row.dim))
            model = data.get("model") or {}
            figures["sources"][harness] = {
                "file": f"{stem}.json",
                "fingerprint": model.get("fingerprint") or data.get("encoder_fingerprint"),
                "checkpoint": model.get("checkpoint"),
            }
        out[row.key] = figures
    return out


# ---------------------------------------------------------------------------- cost
def _load_encoders(checkpoints: Sequence[str], dtype: str) -> dict[str, Any]:
    """Every checkpoint as an encoder on ONE backbone and teacher (options never edit it)."""
    from ..backbones import load_backbone, load_teacher
    from ..config import EncoderConfig
    from ..encoder import DEFAULT_CHECKPOINT, L2VGEncoder, read_checkpoint_meta

    encoders: dict[str, Any] = {}
    backbone = teacher = None
    for name in checkpoints:
        folder = DEFAULT_CHECKPOINT if name == PACKAGED else Path(name)
        config = EncoderConfig.model_validate(read_checkpoint_meta(folder)["config"])
        backbone = backbone or load_backbone(config.backbone)
        teacher = teacher or load_teacher(config.teacher)
        encoders[name] = L2VGEncoder.from_pretrained(folder, backbone=backbone, teacher=teacher, dtype=dtype)
    return encoders


def measure_throughput(
    encoders: dict[str, Any],
    documents: Sequence[str],
    queries: Sequence[str],
    *,
    rounds: int = 3,
    batch_size: int = 16,
    n_latency: int = 8,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Median documents/s, queries/s and batch-1 query latency per encoder, interleaved."""
    for encoder in encoders.values():  # warm-up: lazy allocations, kernel choice, merged LoRA
        encoder.encode_document(list(documents[:2]), batch_size=2)
        encoder.encode_query(list(queries[:2]), batch_size=2)
    runs: dict[str, dict[str, list[float]]] = {name: {"doc": [], "query": [], "lat": []} for name in encoders}
    for r in range(rounds):
        for name, encoder in encoders.items():
            t = timed(lambda e=encoder: e.encode_document(list(documents), batch_size=batch_size))
            runs[name]["doc"].append(len(documents) / t)
            t = timed(lambda e=encoder: e.encode_query(list(queries), batch_size=batch_size))
            runs[name]["query"].append(len(queries) / t)
            singles = [timed(lambda e=encoder, q=q: e.encode_query(q)) for q in queries[:n_latency]]
            runs[name]["lat"].append(1000 * statistics.median(singles))
        if on_round:
            on_round(r + 1)
    return {
        name: {
            "documents_per_s": statistics.median(v["doc"]),
            "queries_per_s": statistics.median(v["query"]),
            "query_latency_ms": statistics.median(v["lat"]),
        }
        for name, v in runs.items()
    }


_PEAK_SCRIPT = """
import json, os, sys, threading
from l2vg_retrieval.bench.options import _load_encoders
from l2vg_retrieval.runtime import peak_rss_mb, release_free_memory
name, dtype, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = json.loads(sys.stdin.read())
encoder = _load_encoders([name], dtype)[name]
page = os.sysconf("SC_PAGE_SIZE") / 2**20
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
release_free_memory()
before = rss()
peak, stop = [before], threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], rss())
        stop.wait(0.002)
watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
encoder.encode_document(texts, batch_size=batch)
stop.set()
watcher.join()
print(json.dumps({
    "rss_mb_loaded": round(before, 1),
    "peak_rss_mb_encoding": round(max(peak[0], rss()), 1),
    "encoding_extra_mb": round(max(peak[0], rss()) - before, 1),
    "process_peak_rss_mb": round(peak_rss_mb(), 1),
}))
"""


def measure_peak_memory(
    checkpoint: str, documents: Sequence[str], *, dtype: str, batch_size: int
) -> dict[str, float]:
    """Memory of a fresh process that loads ``checkpoint`` and embeds ``documents``: its RSS
    once loaded, the peak RSS while encoding (sampled every 2 ms: the process's own
    ``ru_maxrss`` is set by loading, which briefly holds more than encoding does) and the
    difference, which is what the option changes."""
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, checkpoint, dtype, str(batch_size)],
        input=json.dumps(list(documents)),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory run for {checkpoint} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- the table
def build_table(
    spec: OptionsSpec,
    quality: dict[str, dict[str, Any]],
    throughput: dict[str, dict[str, float]],
    memory: dict[str, dict[str, float]],
    dims: dict[str, int],
) -> list[dict[str, Any]]:
    """One dict per row: cost, quality, and each figure relative to the reference row."""
    rows = []
    for row in spec.rows:
        full_dim = dims[row.checkpoint]
        dim = row.dim or full_dim
        rows.append(
            {
                "key": row.key,
                "label": row.label,
                "checkpoint": row.checkpoint,
                "dim": dim,
                "vector_bytes": 4 * dim,  # float32, as the Qdrant indexer stores them
                **throughput[row.checkpoint],
                **memory[row.checkpoint],
                **{k: v for k, v in quality[row.key].items() if k != "sources"},
                "sources": quality[row.key]["sources"],
            }
        )
    reference = next(r for r in rows if r["key"] == spec.reference)
    for r in rows:
        r["relative"] = {
            k: (r[k] / reference[k] if isinstance(r.get(k), float | int) and reference.get(k) else None)
            for k in ("documents_per_s", "queries_per_s", "qa_ndcg10", "bright_ndcg10", "mteb_mean")
        }
    return rows


def run_options_benchmark(
    spec: OptionsSpec,
    *,
    results_dir: Path,
    dtype: str = "bfloat16",
    n_documents: int = 48,
    n_queries: int = 32,
    rounds: int = 3,
    batch_size: int = 16,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Quality from the rows' results files, cost measured here; the JSON to write."""
    from .bright import OFFLINE_DIR, load_local
    from .qa_data import load_qa

    say = on_step or (lambda _: None)
    quality = collect_quality(spec, results_dir)  # fail on a missing file before timing anything
    # Real passage and query lengths: QA passages (~900 characters) and BRIGHT-style posts.
    passages = [p["text"] for p in load_qa().passages]
    documents = passages[:: max(1, len(passages) // n_documents)][:n_documents]
    queries = [e["query"] for d in load_local(OFFLINE_DIR) for e in d.examples][:n_queries]
    checkpoints = list(dict.fromkeys(row.checkpoint for row in spec.rows))
    say(f"loading {len(checkpoints)} checkpoints on one backbone")
    encoders = _load_encoders(checkpoints, dtype)
    dims = {name: int(e.dim) for name, e in encoders.items()}
    throughput = measure_throughput(
        encoders,
        documents,
        queries,
        rounds=rounds,
        batch_size=batch_size,
        on_round=lambda r: say(f"throughput round {r}/{rounds}"),
    )
    del encoders
    memory = {}
    for name in checkpoints:
        say(f"peak memory: {name}")
        memory[name] = measure_peak_memory(name, documents, dtype=dtype, batch_size=batch_size)
    return {
        "reference": spec.reference,
        "dtype": dtype,
        "cost_setup": {
            "documents": len(documents),
            "queries": len(queries),
            "rounds": rounds,
            "batch_size": batch_size,
            "memory": "a fresh process per checkpoint: RSS once loaded, and the peak RSS while it "
            f"embeds the {len(documents)} passages at batch {batch_size} (sampled every 2 ms)",
        },
        "rows": build_table(spec, quality, throughput, memory, dims),
    }
