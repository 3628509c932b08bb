"""l2vg_retrieval: generative embeddings (LLM2Vec-Gen) for vector databases.

Heavy and optional dependencies (torch models, qdrant, langchain, llama-index, mteb) are
imported lazily, so ``import l2vg_retrieval`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "EncoderConfig",
    "GenerateThenEncode",
    "InputCentricEncoder",
    "L2VGEncoder",
    "QdrantIndexer",
    "TeacherEncoder",
    "__version__",
]

_LAZY = {
    "L2VGEncoder": ("encoder", "L2VGEncoder"),
    "CheckpointError": ("encoder", "CheckpointError"),
    "EncoderConfig": ("config", "EncoderConfig"),
    "TeacherEncoder": ("teacher", "TeacherEncoder"),
    "InputCentricEncoder": ("baselines", "InputCentricEncoder"),
    "GenerateThenEncode": ("baselines", "GenerateThenEncode"),
    "QdrantIndexer": ("qdrant", "QdrantIndexer"),
}

if TYPE_CHECKING:
    from .baselines import GenerateThenEncode, InputCentricEncoder
    from .config import EncoderConfig
    from .encoder import CheckpointError, L2VGEncoder
    from .qdrant import QdrantIndexer
    from .teacher import TeacherEncoder


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'l2vg_retrieval' has no attribute {name!r}")
