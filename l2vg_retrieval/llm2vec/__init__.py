"""LLM2Vec for the backbone: the paper's unsupervised teacher, and a baseline.

Bidirectional attention (``attention``), masked next-token prediction (``mntp``) and
unsupervised SimCSE (``simcse``) with peft LoRAs (``lora``), trained by a resumable loop
(``loop``) on packaged text screened against the evaluation sets (``corpus``); saved as
adapters over a fingerprinted backbone (``checkpoint``) and read by ``LLM2VecEncoder``.

Names are imported lazily: ``import l2vg_retrieval`` must stay light.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "LLM2VecEncoder": ".encoder",
    "LLM2VecTrainConfig": ".config",
    "load_llm2vec_config": ".config",
    "load_llm2vec": ".checkpoint",
    "LoadedLLM2Vec": ".checkpoint",
    "is_llm2vec_reference": ".reference",
    "resolve_llm2vec": ".reference",
    "bidirectional_attention": ".attention",
    "run_all": ".pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
