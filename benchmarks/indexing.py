"""Indexing throughput and query latency of QdrantIndexer in embedded (on-disk) mode.

    python -m benchmarks.indexing --docs 10000 --document-mode teacher \
        --generative-docs 1000 --out benchmarks/results/indexing.json

Documents: passages built from gensim's ``lee_background.cor`` (300 news articles,
LGPL test data read as a file): sliding windows of 1-4 consecutive sentences, deduplicated.
Indexing time is split into encoding (the model) and Qdrant (existence checks + upserts);
query latency is measured per query, end to end and for the Qdrant part alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l2vg_retrieval.bench.results import portable_path
from l2vg_retrieval.qdrant import QdrantIndexer
from l2vg_retrieval.sources import sample_queries


def lee_sentences() -> list[str]:
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise SystemExit("the benchmark corpus comes from gensim's test data: pip install gensim==4.4.0")
    text = (Path(spec.origin).parent / "test" / "test_data" / "lee_background.cor").read_text()
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 20]


def benchmark_corpus(n: int) -> Iterator[dict[str, str]]:
    """``n`` distinct passages, generated lazily (the indexer streams them)."""
    sentences = lee_sentences()
    seen: set[str] = set()
    for width in (1, 2, 3, 4, 5, 6):
        for start in range(len(sentences) - width + 1):
            passage = " ".join(sentences[start : start + width])
            if passage in seen:
                continue
            seen.add(passage)
            yield {"id": f"lee-w{width}-{start}", "text": passage}
            if len(seen) == n:
                return
    raise SystemExit(f"the corpus only yields {len(seen)} distinct passages, fewer than {n}")


def load_encoder(model: str | None, document_mode: str) -> tuple[Any, str]:
    from l2vg_retrieval.encoder import DEFAULT_CHECKPOINT, L2VGEncoder

    if model or DEFAULT_CHECKPOINT.is_dir():
        return L2VGEncoder.from_pretrained(model, document_mode=document_mode), str(
            model or DEFAULT_CHECKPOINT
        )
    # Same architecture and cost as the trained checkpoint; only the special-token values differ.
    from l2vg_retrieval.config import EncoderConfig

    return L2VGEncoder.from_config(EncoderConfig(document_mode=document_mode)), "untrained (from_config)"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_one(encoder: Any, n_docs: int, batch_size: int, n_queries: int, folder: Path) -> dict[str, Any]:
    queries = [q["text"] for q in sample_queries()]
    queries = [queries[i % len(queries)] + ("" if i < len(queries) else f" ({i})") for i in range(n_queries)]
    with QdrantIndexer(encoder, "bench", path=folder, batch_size=batch_size, recreate=True) as indexer:
        started = time.perf_counter()
        report = indexer.index(benchmark_corpus(n_docs))
        wall = time.perf_counter() - started
        assert indexer.count() == n_docs, "benchmark corpus did not index completely"
        indexer.search(queries[0], k=10)  # warm-up
        end_to_end, qdrant_only = [], []
        for q in queries:
            t0 = time.perf_counter()
            indexer.search(q, k=10)
            end_to_end.append((time.perf_counter() - t0) * 1000)
        vectors = encoder.encode_query(queries, show_progress_bar=False)
        for v in vectors:
            t0 = time.perf_counter()
            indexer.client.query_points("bench", query=v.tolist(), limit=10)
            qdrant_only.append((time.perf_counter() - t0) * 1000)
        resume_started = time.perf_counter()
        again = indexer.index(benchmark_corpus(n_docs), show_progress=False)
        resume_seconds = time.perf_counter() - resume_started
    other = wall - report.encode_seconds - report.qdrant_seconds
    return {
        "documents": n_docs,
        "document_mode": encoder.config.document_mode,
        "batch_size": batch_size,
        "index_wall_seconds": round(wall, 2),
        "encode_seconds": round(report.encode_seconds, 2),
        "qdrant_seconds": round(report.qdrant_seconds, 2),
        "other_seconds": round(other, 2),
        "docs_per_second": round(n_docs / wall, 1),
        "encode_docs_per_second": round(n_docs / max(report.encode_seconds, 1e-9), 1),
        "qdrant_points_per_second": round(n_docs / max(report.qdrant_seconds, 1e-9), 1),
        "reindex_same_corpus": {
            "seconds": round(resume_seconds, 2),
            "indexed": again.indexed,
            "skipped_existing": again.skipped_existing,
        },
        "query_latency_ms": {
            "queries": n_queries,
            "k": 10,
            "end_to_end_p50": round(statistics.median(end_to_end), 2),
            "end_to_end_p95": round(percentile(end_to_end, 95), 2),
            "qdrant_only_p50": round(statistics.median(qdrant_only), 2),
            "qdrant_only_p95": round(percentile(qdrant_only, 95), 2),
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000, help="documents in the main run")
    parser.add_argument("--document-mode", default="teacher", choices=["teacher", "generative"])
    parser.add_argument(
        "--generative-docs", type=int, default=1000, help="a second run in generative mode (0: skip)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--model", help="checkpoint folder (default: packaged, else untrained same-size encoder)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/indexing.json"))
    parser.add_argument(
        "--note", default="", help="what else ran on the machine, if anything (stored with the results)"
    )
    args = parser.parse_args(argv)

    runs = []
    plan = [(args.docs, args.document_mode)]
    if args.generative_docs:
        plan.append((args.generative_docs, "generative"))
    checkpoint = None
    for n_docs, mode in plan:
        encoder, checkpoint = load_encoder(args.model, mode)
        with tempfile.TemporaryDirectory(prefix="l2vg-bench-") as tmp:
            print(f"== {n_docs} documents, document_mode={mode}", file=sys.stderr)
            runs.append(run_one(encoder, n_docs, args.batch_size, args.queries, Path(tmp)))
        del encoder
    result = {
        "benchmark": "indexing",
        "command": "python -m benchmarks.indexing " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "backend": "qdrant-client embedded local mode, on disk (exact search)",
        "checkpoint": portable_path(checkpoint) if checkpoint else checkpoint,
        "corpus": "gensim lee_background.cor, 1-6 sentence windows, deduplicated",
        "machine": {
            "cpus": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            **({"note": args.note} if args.note else {}),
        },
        "runs": runs,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
