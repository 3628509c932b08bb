"""Speed: texts/s and per-call latency of the lineup, in one process, on the same texts.

The machine these run on is usually shared, so absolute numbers drift between runs;
the ratios (L2VG against each alternative, measured minutes apart in one process) are
the figures to quote.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..runtime import peak_rss_mb
from .bright import OFFLINE_DIR, load_local

SPEED_MODELS = ("l2vg", "input-centric", "teacher", "generate-then-encode")


def default_texts() -> list[str]:
    """The offline BRIGHT-style posts: real query lengths (150-300 characters)."""
    return [e["query"] for d in load_local(OFFLINE_DIR) for e in d.examples]


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    encoder: Any, texts: Sequence[str], *, n_latency: int, batch_size: int = 32, warmup: bool = True
) -> dict[str, Any]:
    """Throughput at ``batch_size`` over ``texts``; latency of single-text calls."""
    if not texts:
        raise ValueError("speed needs at least one text")
    if warmup:  # first calls pay for lazy allocations and kernel selection
        encoder.encode_query(list(texts[:2]), batch_size=2)
    batch_times = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        batch_times.append(
            (len(chunk), timed(lambda c=chunk: encoder.encode_query(c, batch_size=batch_size)))
        )
    total = sum(t for _, t in batch_times)
    full = [t for n, t in batch_times if n == batch_size]
    singles = [timed(lambda t=t: encoder.encode_query(t, batch_size=1)) for t in texts[:n_latency]]
    return {
        "n_texts": len(texts),
        "texts_per_s": len(texts) / total,
        f"latency_ms_batch{batch_size}": 1000 * statistics.median(full) if full else None,
        f"per_query_ms_batch{batch_size}": 1000 * statistics.median(full) / batch_size if full else None,
        "latency_ms_batch1": 1000 * statistics.median(singles) if singles else None,
        "peak_rss_mb_after": round(peak_rss_mb(), 1),
    }


def retyped(l2vg: Any, dtype: torch.dtype) -> Any:
    """A twin of ``l2vg`` in another dtype, on the SAME backbone object (converted in place)."""
    from ..encoder import L2VGEncoder

    twin = L2VGEncoder(
        l2vg.config,
        l2vg.backbone,
        teacher_dim=l2vg.teacher_dim,
        teacher=l2vg.teacher.teacher,
        device=str(l2vg.device_),
        dtype=dtype,
    )
    twin.load_trainable_state(l2vg.trainable_state())
    return twin


def run_speed(
    l2vg: Any,
    *,
    texts: Sequence[str] | None = None,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    models: Sequence[str] = SPEED_MODELS,
    n_texts: int = 32,
    n_latency: int = 4,
    gte_texts: int = 4,
    gte_max_new_tokens: int = 64,
    batch_size: int = 32,
    on_step: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Measure every model in every dtype. fp32 runs first: converting the shared backbone
    to bf16 is lossy, so it happens once, after every fp32 measurement."""
    from ..runtime import cpu_supports_bf16
    from .lineup import encoders_from

    unknown = set(models) - set(SPEED_MODELS)
    if unknown:
        raise ValueError(f"unknown speed model(s) {sorted(unknown)}; choose from {', '.join(SPEED_MODELS)}")
    pool = list(texts) if texts is not None else default_texts()
    pool = pool[:n_texts]
    order = sorted(dtypes, key=lambda d: d != "float32")
    results: dict[str, dict[str, Any]] = {}
    # The same texts embedded in each dtype: how much bf16 moves the vectors.
    vectors: dict[str, np.ndarray] = {}
    for dtype_name in order:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
        enc = l2vg if l2vg.dtype_ == dtype else retyped(l2vg, dtype)
        vectors[dtype_name] = np.asarray(enc.encode_query(pool, batch_size=batch_size))
        others = encoders_from(
            enc,
            [{"l2vg": "l2vg-gen-docs"}.get(m, m) for m in models if m != "l2vg"],
            gte_max_new_tokens=gte_max_new_tokens,
        )
        row: dict[str, Any] = {}
        for model in models:
            if model == "teacher" and dtype_name != "float32":
                continue  # the teacher has no bf16 mode: it always runs in fp32
            if on_step:
                on_step(model, dtype_name)
            encoder = enc if model == "l2vg" else others[model]
            if model == "generate-then-encode":
                row[model] = measure(
                    encoder, pool[:gte_texts], n_latency=min(n_latency, gte_texts), batch_size=batch_size
                )
                row[model]["max_new_tokens"] = gte_max_new_tokens
            else:
                row[model] = measure(encoder, pool, n_latency=n_latency, batch_size=batch_size)
        results[dtype_name] = row
    return {
        "texts": {
            "n": len(pool),
            "mean_chars": sum(map(len, pool)) / len(pool),
            "source": "bright_offline posts",
        },
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_supports_bf16(),
        "results": results,
        "ratios": speed_ratios(results),
        "dtype_agreement": _dtype_agreement(vectors),
    }


def _dtype_agreement(vectors: dict[str, np.ndarray]) -> dict[str, float] | None:
    """Cosine between the fp32 and bf16 L2VG embeddings of the same texts."""
    if "float32" not in vectors or "bfloat16" not in vectors:
        return None
    cos = np.sum(vectors["float32"] * vectors["bfloat16"], axis=1)
    return {"cosine_fp32_bf16_mean": float(cos.mean()), "cosine_fp32_bf16_min": float(cos.min())}


def speed_ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """How many times faster L2VG is than each alternative (>1 means L2VG is faster)."""
    out: dict[str, dict[str, float]] = {}
    for dtype_name, row in results.items():
        if "l2vg" not in row:
            continue
        mine = row["l2vg"]
        ratios: dict[str, float] = {}
        for model, other in row.items():
            if model == "l2vg":
                continue
            ratios[f"throughput_vs_{model}"] = mine["texts_per_s"] / other["texts_per_s"]
            if mine["latency_ms_batch1"] and other["latency_ms_batch1"]:
                ratios[f"latency1_vs_{model}"] = other["latency_ms_batch1"] / mine["latency_ms_batch1"]
        out[dtype_name] = ratios
    if "float32" in results and "bfloat16" in results and "l2vg" in results["bfloat16"]:
        out["bf16_vs_fp32"] = {
            "l2vg_throughput": results["bfloat16"]["l2vg"]["texts_per_s"]
            / results["float32"]["l2vg"]["texts_per_s"]
        }
    return out
