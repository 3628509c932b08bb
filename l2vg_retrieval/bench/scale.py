"""Scale: the embedded engines at N vectors, and interactive query latency end to end.

For each N and each backend (qdrant-client local mode: exact search in Python; Qdrant
Edge: Rust, HNSW built by ``optimize()``), through the same store interface the indexer
uses: ingest rate, index build time, search p50/p95 at k = 10 without and with a payload
filter (a metadata filter plus safe mode's harm exclusion), recall@10 of each against
exact search done independently in numpy, resident memory and disk size.

Vectors are ``lowrank`` (the default: synthetic, a Gaussian in a random 16-d subspace
plus a little isotropic noise, renormalised; queries drawn from the same distribution:
embedding-like, with real nearest neighbours), ``random`` (unit Gaussian in all ``dim``
dimensions: a degenerate stress case, see below) or ``real``: MiniLM (teacher-mode
document) embeddings of the packaged QA corpus, 5,307 passages, repeated with Gaussian
noise up to N and renormalised; queries are then MiniLM embeddings of the 522 QA questions.

Why not ``random`` by default: independent unit Gaussian queries against unit Gaussian
points in 384-d have no nearest neighbours worth the name. At 10k points a query's 10th
and 11th best cosines differ by 0.002 and its 100th is only 0.04 below its 10th, so which
ten points are "the" top 10 is noise; every graph index (HNSW included) loses recall on
such data as N grows (at 100k, ef 128: recall@10 0.15 against exact). Real embeddings
have a low intrinsic dimension, which is what HNSW relies on; ``random`` recall says
nothing about them.

Interactive latency: single queries, ``encode_query`` then the store's search, timed
together, for the encoders given (L2VG in bf16 and MiniLM in the CLI), against the
largest Edge (or local) collection of the run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import models

from ..qdrant import HARM_FLAG_KEY, METADATA_KEY, build_filter, open_collection, open_store
from ..qdrant_edge import DEFAULT_HNSW_EF
from ..vectors import unit_rows

SCALE_BACKENDS = ("local", "edge")
VECTOR_KINDS = ("lowrank", "random", "real")
K = 10
# Every point carries these, like a real collection: the filter keeps 3 of 10 buckets and
# drops the 1% flagged as harmful (safe mode's exclusion, a boolean match).
N_BUCKETS = 10
FILTER_BUCKETS = (1, 2, 3)
FLAG_EVERY = 100


def random_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32), np.float32)


# ``lowrank``: points live near a random LOWRANK_DIM-d subspace (MiniLM embeddings of
# text have an intrinsic dimension of this order), with isotropic noise of total norm
# LOWRANK_NOISE against the subspace part's ~1.
LOWRANK_DIM = 16
LOWRANK_NOISE = 0.1


def lowrank_vectors(n: int, dim: int, seed: int, *, basis_seed: int = 0) -> np.ndarray:
    """Unit rows near a random ``LOWRANK_DIM``-d subspace of ``dim`` (the same subspace for
    every ``seed`` with the same ``basis_seed``: data and queries share it)."""
    rank = min(LOWRANK_DIM, dim)
    basis, _ = np.linalg.qr(np.random.default_rng([basis_seed, 7]).standard_normal((dim, rank)))
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65_536):
        m = min(n, start + 65_536) - start
        latent = rng.standard_normal((m, rank)) / np.sqrt(rank)
        noise = rng.standard_normal((m, dim)) * (LOWRANK_NOISE / np.sqrt(dim))
        out[start : start + m] = unit_rows(latent @ basis.T + noise, np.float32)
    return out


def noisy_copies(base: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    """``n`` rows: the base rows in turn, each copy after the first with Gaussian noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, 65_536):
        idx = np.arange(start, min(n, start + 65_536))
        rows = base[idx % len(base)].copy()
        noisy = idx >= len(base)
        rows[noisy] += noise * rng.standard_normal((int(noisy.sum()), base.shape[1]), dtype=np.float32)
        out[idx] = unit_rows(rows, np.float32)
    return out


def payload(i: int) -> dict[str, Any]:
    return {
        "text": f"point {i}",
        "metadata": {"bucket": i % N_BUCKETS},
        "doc_id": str(i),
        HARM_FLAG_KEY: i % FLAG_EVERY == 0,
    }


def bench_filter() -> models.Filter:
    base = build_filter({"bucket": list(FILTER_BUCKETS)})
    assert base is not None
    flagged = models.FieldCondition(key=HARM_FLAG_KEY, match=models.MatchValue(value=True))
    return base.model_copy(update={"must_not": [flagged]})


def filter_mask(n: int) -> np.ndarray:
    i = np.arange(n)
    return np.isin(i % N_BUCKETS, FILTER_BUCKETS) & (i % FLAG_EVERY != 0)


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k highest cosine scores per query (rows are unit vectors), in numpy."""
    out = np.empty((len(queries), k), dtype=np.int64)
    allowed = np.flatnonzero(mask) if mask is not None else None
    rows = base[allowed] if allowed is not None else base
    for start in range(0, len(queries), 64):
        q = queries[start : start + 64]
        scores = (rows @ q.T).T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)
        out[start : start + len(q)] = allowed[top] if allowed is not None else top
    return out


def recall_at_k(found: Sequence[Sequence[int]], truth: np.ndarray) -> float:
    hits = [len(set(f) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def _pct(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 3)


def _latency(values_ms: Sequence[float]) -> dict[str, float]:
    return {
        "p50": _pct(values_ms, 50),
        "p95": _pct(values_ms, 95),
        "mean": round(statistics.fmean(values_ms), 3),
    }


def rss_mb() -> float | None:
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def disk_mb(folder: Path) -> float:
    """Space actually allocated (Edge preallocates sparse files: their size overstates it)."""
    total = sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())
    return round(total / 2**20, 1)


def _timed_queries(
    store: Any, queries: np.ndarray, query_filter: models.Filter | None
) -> tuple[list[float], list[float], list[list[int]]]:
    """Wall and CPU milliseconds per query (CPU counts every thread of the process, so the
    engine's search pool too: on a shared machine it is the figure contention does not
    inflate), and the doc ids found."""
    wall, cpu, found = [], [], []
    for q in queries:
        w0, c0 = time.perf_counter(), time.process_time()
        scored = store.query(q, query_filter, K)
        wall.append((time.perf_counter() - w0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        found.append([int(payload["doc_id"]) for _, _, payload in scored])
    return wall, cpu, found


def _search_row(
    store: Any, queries: np.ndarray, truth: np.ndarray, truth_filtered: np.ndarray
) -> dict[str, Any]:
    plain_ms, plain_cpu, plain_found = _timed_queries(store, queries, None)
    filt_ms, filt_cpu, filt_found = _timed_queries(store, queries, bench_filter())
    return {
        "search_ms": _latency(plain_ms),
        "search_cpu_ms_p50": _pct(plain_cpu, 50),
        "search_filtered_ms": _latency(filt_ms),
        "search_filtered_cpu_ms_p50": _pct(filt_cpu, 50),
        "recall@10": round(recall_at_k(plain_found, truth), 4),
        "recall@10_filtered": round(recall_at_k(filt_found, truth_filtered), 4),
        "filtered_results_obey_filter": all(
            all(int(d) % N_BUCKETS in FILTER_BUCKETS and int(d) % FLAG_EVERY for d in f) for f in filt_found
        ),
    }


def _data(kind: str, n: int, dim: int, seed: int, base: np.ndarray, noise: float) -> np.ndarray:
    if kind == "lowrank":
        return lowrank_vectors(n, dim, seed, basis_seed=seed)
    if kind == "random":
        return random_vectors(n, dim, seed)
    return noisy_copies(base, n, noise, seed)


def run_backend(
    backend: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    folder: Path,
    *,
    batch_size: int = 1024,
    truth: np.ndarray,
    truth_filtered: np.ndarray,
    hnsw_efs: Sequence[int] = (DEFAULT_HNSW_EF,),
    payload_index: bool = True,
    keep_open: bool = False,
    indexing_threshold_kb: int | None = None,
    full_scan_threshold_kb: int | None = None,
    on_step: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], Any]:
    """Build one collection of ``vectors`` and measure it; the store if ``keep_open``.

    On Edge every ``hnsw_efs`` value is measured on the same graph (``ef_sweep``); the
    row's main figures are the first one's. Local mode is exact: ef means nothing to it.
    ``indexing_threshold_kb`` and ``full_scan_threshold_kb`` lower Edge's sizes below which
    a segment gets no graph and a search scans exactly (for tests: a small collection is
    otherwise searched exactly, and its recall says nothing about HNSW).
    """
    n, dim = vectors.shape
    rss_before = rss_mb()
    if backend == "edge" and (indexing_threshold_kb is not None or full_scan_threshold_kb is not None):
        from ..qdrant_edge import DEFAULT_FULL_SCAN_THRESHOLD_KB, EdgeStore

        store = EdgeStore(
            folder,
            "scale",
            hnsw_ef=hnsw_efs[0],
            indexing_threshold_kb=indexing_threshold_kb,
            full_scan_threshold_kb=full_scan_threshold_kb or DEFAULT_FULL_SCAN_THRESHOLD_KB,
        )
    else:
        store = open_store("scale", path=folder, backend=backend, hnsw_ef=hnsw_efs[0])
    meta = {"format": 1, "fingerprint": f"bench-scale-{dim}", "dim": dim, "model": "bench", "screened": True}
    open_collection(store, meta, recreate=True)
    if payload_index:  # before the upload, as Qdrant advises: the graph then knows the field
        store.create_index(f"{METADATA_KEY}.bucket", "integer")
    if on_step:
        on_step(f"{backend}: ingest {n}")
    w0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        ids = [str(uuid.UUID(int=i + 1)) for i in range(start, stop)]
        store.upsert(ids, vectors[start:stop], [payload(i) for i in range(start, stop)])
    ingest, ingest_cpu = time.perf_counter() - w0, time.process_time() - c0
    if on_step:
        on_step(f"{backend}: build index")
    w0, c0 = time.perf_counter(), time.process_time()
    store.optimize()
    build, build_cpu = time.perf_counter() - w0, time.process_time() - c0
    assert store.count() == n, f"{backend} holds {store.count()} points, expected {n}"
    store.query(queries[0], None, K)  # warm-up: first query maps files and spins up threads
    if on_step:
        on_step(f"{backend}: {len(queries)} queries")
    sweep = []
    for ef in hnsw_efs if backend == "edge" else hnsw_efs[:1]:
        store.hnsw_ef = ef
        sweep.append({"hnsw_ef": ef, **_search_row(store, queries, truth, truth_filtered)})
    store.hnsw_ef = hnsw_efs[0]
    row: dict[str, Any] = {
        "backend": backend,
        "n": n,
        "ingest_seconds": round(ingest, 2),
        "ingest_cpu_seconds": round(ingest_cpu, 2),
        "ingest_points_per_s": round(n / max(ingest, 1e-9), 1),
        "build_seconds": round(build, 2),
        "build_cpu_seconds": round(build_cpu, 2),
        "payload_index": payload_index,
        **{k: v for k, v in sweep[0].items() if k != "hnsw_ef"},
        "hnsw_ef": hnsw_efs[0] if backend == "edge" else None,
        "rss_mb": rss_mb(),
        "rss_growth_mb": None if rss_before is None else round((rss_mb() or 0) - rss_before, 1),
        "disk_mb": disk_mb(folder),
    }
    if len(sweep) > 1:
        row["ef_sweep"] = sweep
    if hasattr(store, "index_status"):
        row["index_status"] = store.index_status()
    if keep_open:
        return row, store
    store.close()
    return row, None


def interactive_latency(
    encoders: Mapping[str, Any], store: Any, texts: Sequence[str], *, n_queries: int
) -> dict[str, Any]:
    """Single-query ``encode_query`` + search against ``store``, per encoder."""
    out: dict[str, Any] = {}
    for name, encoder in encoders.items():
        encoder.encode_query(texts[0])  # warm-up
        encode_ms, search_ms, total_ms = [], [], []
        for text in texts[:n_queries]:
            t0 = time.perf_counter()
            vector = np.asarray(encoder.encode_query(text), dtype=np.float32)
            t1 = time.perf_counter()
            store.query(vector, None, K)
            t2 = time.perf_counter()
            encode_ms.append((t1 - t0) * 1000)
            search_ms.append((t2 - t1) * 1000)
            total_ms.append((t2 - t0) * 1000)
        out[name] = {
            "queries": len(total_ms),
            "encode_ms": _latency(encode_ms),
            "search_ms": _latency(search_ms),
            "end_to_end_ms": _latency(total_ms),
        }
    return out


def qa_texts() -> tuple[list[str], list[str]]:
    """The packaged QA corpus passages and questions (real texts, offline)."""
    folder = Path(__file__).resolve().parents[1] / "data" / "qa_offline"
    with gzip.open(folder / "corpus.jsonl.gz", "rt") as fh:
        passages = [json.loads(line)["text"] for line in fh]
    questions = [json.loads(line)["text"] for line in (folder / "queries.jsonl").read_text().splitlines()]
    return passages, questions


def real_base(
    teacher: Any, cache_dir: Path | None, max_base: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM embeddings of the QA passages (the first ``max_base``) and questions, cached
    on disk by content hash."""
    passages, questions = qa_texts()
    passages = passages[:max_base] if max_base else passages
    digest = hashlib.sha256("\x00".join(passages + questions).encode()).hexdigest()[:16]
    path = cache_dir / f"qa-minilm-{digest}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        data = np.load(path)
        return data["passages"], data["questions"]
    docs = unit_rows(teacher.encode_query(passages, batch_size=64), np.float32)
    qs = unit_rows(teacher.encode_query(questions, batch_size=64), np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, passages=docs, questions=qs)
    return docs, qs


def run_scale(
    sizes: Sequence[int],
    *,
    backends: Sequence[str] = SCALE_BACKENDS,
    dim: int | None = None,
    n_queries: int = 100,
    vectors: str = "lowrank",
    teacher: Any = None,
    noise: float = 0.02,
    seed: int = 0,
    local_max: int = 100_000,
    batch_size: int = 1024,
    hnsw_efs: Sequence[int] = (DEFAULT_HNSW_EF,),
    payload_index: bool = True,
    max_base: int | None = None,
    encoders: Mapping[str, Any] | None = None,
    interactive_texts: Sequence[str] | None = None,
    n_interactive: int = 30,
    work_dir: Path | None = None,
    cache_dir: Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every backend at every size; interactive latency against the largest collection."""
    unknown = set(backends) - set(SCALE_BACKENDS)
    if unknown:
        raise ValueError(f"unknown backend(s) {sorted(unknown)}; choose from {', '.join(SCALE_BACKENDS)}")
    if not sizes or min(sizes) < K:
        raise ValueError(f"sizes must be at least {K}")
    if vectors not in VECTOR_KINDS:
        raise ValueError(f"vectors must be one of {', '.join(VECTOR_KINDS)}")
    if dim is None:  # the encoders' own space, so interactive queries fit the collection
        dims = {int(e.dim) for e in (encoders or {}).values()}
        if len(dims) > 1:
            raise ValueError(f"the interactive encoders disagree on the dimension: {sorted(dims)}")
        dim = dims.pop() if dims else 384
    if vectors == "real":
        if teacher is None:
            raise ValueError("vectors='real' needs the teacher (MiniLM) to embed the QA corpus")
        base, query_base = real_base(teacher, cache_dir, max_base)
        dim = base.shape[1]
        queries = query_base[:n_queries]
        described = f"MiniLM embeddings of {len(base)} QA passages, copies with N(0, {noise}²) noise"
    elif vectors == "lowrank":
        base = np.empty((0, dim), dtype=np.float32)
        queries = lowrank_vectors(n_queries, dim, seed + 1, basis_seed=seed)
        described = (
            f"synthetic: Gaussian in a random {LOWRANK_DIM}-d subspace + isotropic noise of norm "
            f"{LOWRANK_NOISE}, unit length; queries from the same distribution"
        )
    else:
        base = np.empty((0, dim), dtype=np.float32)
        queries = random_vectors(n_queries, dim, seed + 1)
        described = "unit Gaussian (no neighbour structure: a degenerate stress case)"
    if interactive_texts is None:
        interactive_texts = qa_texts()[1]
    runs: list[dict[str, Any]] = []
    interactive: dict[str, Any] | None = None
    owned = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="l2vg-scale-")) if work_dir is None else work_dir
    try:
        ordered = sorted(sizes)
        for n in ordered:
            data = _data(vectors, n, dim, seed, base, noise)
            truth = exact_top_k(data, queries, K)
            truth_filtered = exact_top_k(data, queries, K, filter_mask(n))
            chosen = [b for b in backends if b != "local" or n <= local_max]
            for backend in backends:
                if backend not in chosen:
                    runs.append({"backend": backend, "n": n, "skipped": f"n > --local-max {local_max}"})
            # Interactive latency runs against the largest collection, on Edge when measured.
            target = ("edge" if "edge" in chosen else chosen[-1]) if chosen else None
            for backend in chosen:
                folder = root / f"{backend}-{n}"
                keep = bool(encoders) and n == ordered[-1] and backend == target
                row, store = run_backend(
                    backend,
                    data,
                    queries,
                    folder,
                    batch_size=batch_size,
                    truth=truth,
                    truth_filtered=truth_filtered,
                    hnsw_efs=hnsw_efs,
                    payload_index=payload_index,
                    keep_open=keep,
                    on_step=on_step,
                )
                runs.append(row)
                if store is not None:
                    if on_step:
                        on_step(f"interactive latency on {backend} at {n}")
                    try:
                        interactive = {
                            "backend": backend,
                            "n": n,
                            "results": interactive_latency(
                                encoders or {}, store, list(interactive_texts), n_queries=n_interactive
                            ),
                        }
                    finally:
                        store.close()
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "vectors": {
            "kind": vectors,
            "dim": dim,
            "source": described,
            "queries": len(queries),
        },
        "k": K,
        "filter": {
            "metadata": {"bucket": list(FILTER_BUCKETS)},
            "must_not": f"{HARM_FLAG_KEY} == true",
            "selectivity": round(float(filter_mask(10_000).mean()), 3),
        },
        "runs": runs,
        "interactive": interactive,
    }
