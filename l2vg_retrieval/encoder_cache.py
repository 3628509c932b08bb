"""One encoder per (checkpoint, device, dtype, document mode, size) per process, shared by adapters.

Framework adapters are cheap objects that users create freely (one per vector store, per
retriever, per evaluation); the frozen backbone behind them is hundreds of MB and must be
loaded once. The encoder itself is thread-safe, so sharing it across adapters is sound.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()
_CACHE: dict[tuple[str | None, str | None, str, str | None, int | None], Any] = {}


def shared_encoder(
    model: str | Path | None = None,
    *,
    device: str | None = None,
    dtype: str = "auto",
    document_mode: str | None = None,
    truncate_dim: int | None = None,
) -> Any:
    """Load (once) and return the encoder for a checkpoint folder; None = the packaged default.

    ``truncate_dim`` (Matryoshka size) is part of the key: adapters at different sizes must
    not share, and so resize, one encoder.
    """
    resolved = str(Path(model).resolve()) if model is not None else None
    key = (resolved, device, dtype, document_mode, truncate_dim)
    with _LOCK:
        if key not in _CACHE:
            from .encoder import L2VGEncoder

            _CACHE[key] = L2VGEncoder.from_pretrained(
                model, device=device, dtype=dtype, document_mode=document_mode, truncate_dim=truncate_dim
            )
        return _CACHE[key]


def clear_shared_encoders() -> None:
    """Drop cached encoders (frees memory once no adapter holds them)."""
    with _LOCK:
        _CACHE.clear()
