"""The LLM2Vec rows of the benchmark lineup: each step of the recipe as its own retriever.

- ``llm2vec-causal``: the backbone, causal attention, mean-pooled (no training);
- ``llm2vec-bi``: the same weights with bidirectional attention (no training);
- ``llm2vec-mntp``: + the MNTP adapter merged;
- ``llm2vec``: + SimCSE: the full unsupervised LLM2Vec, the paper's teacher.

The two untrained rows share the lineup's loaded backbone (bidirectionality is switched on
per call only); the trained rows load their own merged copy. When the L2VG encoder was
taught by this same checkpoint, ``llm2vec`` reuses its teacher's model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .reference import SHORT_NAME, is_llm2vec_reference

LLM2VEC_KEYS: tuple[str, ...] = ("llm2vec-causal", "llm2vec-bi", "llm2vec-mntp", "llm2vec")
LLM2VEC_LABELS: dict[str, str] = {
    "llm2vec-causal": "LLM2Vec step 0: causal, mean-pooled (untrained)",
    "llm2vec-bi": "LLM2Vec step 1: bidirectional (untrained)",
    "llm2vec-mntp": "LLM2Vec step 2: bidirectional + MNTP",
    "llm2vec": "LLM2Vec (bidirectional + MNTP + SimCSE)",
}


def default_reference(l2vg: Any) -> str:
    """The L2VG encoder's own teacher if it is an LLM2Vec checkpoint, else the packaged one."""
    teacher = getattr(getattr(l2vg, "config", None), "teacher", None)
    return teacher if isinstance(teacher, str) and is_llm2vec_reference(teacher) else SHORT_NAME


def llm2vec_lineup(l2vg: Any, keys: Sequence[str], *, reference: str | None = None) -> dict[str, Any]:
    """Encoders for the requested LLM2Vec keys, around the L2VG encoder's backbone and device."""
    from .encoder import LLM2VecEncoder

    unknown = [k for k in keys if k not in LLM2VEC_KEYS]
    if unknown:
        raise ValueError(f"unknown LLM2Vec model key(s) {unknown}; choose from {', '.join(LLM2VEC_KEYS)}")
    reference = reference or default_reference(l2vg)
    device, dtype = str(l2vg.device_), l2vg.dtype_
    out: dict[str, Any] = {}
    for key in keys:
        if key in ("llm2vec-causal", "llm2vec-bi"):
            out[key] = LLM2VecEncoder(
                l2vg.backbone, bidirectional=key == "llm2vec-bi", device=device, dtype=dtype
            )
        elif key == "llm2vec" and reference == getattr(l2vg.config, "teacher", None):
            shared = getattr(l2vg.teacher, "llm2vec", None)
            out[key] = shared or LLM2VecEncoder.from_pretrained(reference, device=device)
        else:
            stages = ("mntp",) if key == "llm2vec-mntp" else None
            out[key] = LLM2VecEncoder.from_pretrained(reference, stages=stages, device=device)
    return out
