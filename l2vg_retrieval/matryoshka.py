"""Matryoshka dimensions: an embedding's first m dimensions used as an embedding.

sentence-transformers' ``truncate_dim`` semantics: cut the *unnormalised* vector to its
first m dimensions, then normalise (if asked). Cosine similarity ignores scale, so cutting
a normalised vector and re-normalising gives the same result.
"""

from __future__ import annotations

import torch


def check_dim(dim: int, full: int) -> int:
    """``dim`` after checking it is a valid prefix length of a ``full``-d embedding."""
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= full:
        raise ValueError(f"dim must be an integer in 1..{full} (the embedding's size), got {dim!r}")
    return dim


def truncate(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` dimensions of ``[..., D]`` embeddings (the same tensor when ``dim == D``)."""
    return embeddings if dim == embeddings.shape[-1] else embeddings[..., :dim]
