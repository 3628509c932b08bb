"""Teacher embeddings of the responses: the alignment targets, cached beside them.

Stored as safetensors (one row per response) with the ids and a hash of each response in
the file's metadata, so a changed or new response is re-embedded and nothing else is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def load_targets(path: Path) -> dict[str, tuple[str, torch.Tensor]]:
    """id -> (response digest, target vector); empty if the file is missing or unreadable."""
    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("rows", "[]"))
            matrix = fh.get_tensor("targets")
    except Exception:  # a torn or foreign file is simply recomputed
        return {}
    return {row_id: (digest, matrix[i]) for i, (row_id, digest) in enumerate(meta)}


def build_targets(
    responses: dict[str, dict[str, Any]],
    teacher: Any,
    path: Path,
    *,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Embed every response not already cached with the same text; return id -> target."""
    cached = load_targets(path)
    fresh: dict[str, torch.Tensor] = {}
    todo: list[tuple[str, str]] = []
    for row_id, row in responses.items():
        text = row["response"].strip() or row["query"]
        hit = cached.get(row_id)
        if hit is not None and hit[0] == _digest(text):
            fresh[row_id] = hit[1]
        else:
            todo.append((row_id, text))
    if todo:
        vectors = teacher.encode(
            [t for _, t in todo],
            batch_size=batch_size,
            convert_to_tensor=True,
            show_progress_bar=True,
            normalize_embeddings=True,
        )
        for (row_id, _), vector in zip(todo, vectors, strict=True):
            fresh[row_id] = vector
        ids = sorted(fresh)
        digests = {
            row_id: _digest(responses[row_id]["response"].strip() or responses[row_id]["query"])
            for row_id in ids
        }
        matrix = torch.stack([fresh[i] for i in ids]).float().contiguous()
        tmp = path.with_suffix(".tmp")
        save_file(
            {"targets": matrix}, str(tmp), metadata={"rows": json.dumps([[i, digests[i]] for i in ids])}
        )
        tmp.replace(path)
    return fresh
