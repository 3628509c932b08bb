"""Matryoshka prefixes without retraining: a variance-ordered rotation of the teacher space.

A teacher's dimensions come in no particular order, so the first m dimensions of an
encoder that was not trained for Matryoshka are a poor embedding. An orthogonal R whose
rows are the eigenvectors of the (uncentred) second-moment matrix E[y yᵀ] of teacher
vectors y, sorted by eigenvalue, orders the dimensions by energy: every prefix of R y
keeps the most energy any m-dimensional linear projection can, and R being orthogonal
leaves every full-size cosine unchanged.

:func:`apply_rotation` folds R into the alignment head (its output becomes R y) and
records it on the encoder, whose ``teacher`` then hands out rotated vectors too: teacher-
mode documents, training targets, the safety module's refusal prototype and benchmark
teacher documents all stay in the head's space.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .batching import format_output
from .config import EncoderConfig
from .inputs import as_text_list

if TYPE_CHECKING:
    from .encoder import L2VGEncoder

# R is stored in float32: R Rᵀ is then the identity to ~1e-6 at D=384, so this bound only
# catches matrices that are not rotations at all (a corrupt or hand-edited checkpoint).
_ORTHOGONALITY_TOL = 1e-4


def _as_matrix(vectors: np.ndarray | torch.Tensor, what: str = "vectors") -> torch.Tensor:
    """``vectors`` as a float64 ``[N, D]`` tensor on the CPU, checked finite."""
    matrix = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, torch.Tensor) else vectors)
    matrix = matrix.detach().to(device="cpu", dtype=torch.float64)
    if matrix.dim() != 2 or matrix.shape[1] < 1:
        raise ValueError(f"{what} must be a 2-D [N, D] array, got shape {tuple(matrix.shape)}")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"{what} contain NaN or infinite values")
    return matrix


def variance_rotation(vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The ``[D, D]`` float32 rotation whose rows are the eigenvectors of E[y yᵀ] over the
    rows y of ``vectors``, by eigenvalue descending.

    Uncentred on purpose: retrieval compares vectors by cosine around the origin, not
    around their mean, so the energy a prefix must keep is the raw second moment. Each
    row's largest-magnitude entry is made positive (an eigenvector's sign is arbitrary),
    so the same data always gives the same R. Needs at least D vectors: with fewer, some
    directions are never seen and their order would be arbitrary.
    """
    matrix = _as_matrix(vectors)
    n, dim = matrix.shape
    if n < dim:
        raise ValueError(
            f"a {dim}-d rotation needs at least {dim} vectors to estimate every direction, got {n}"
        )
    second_moment = matrix.T @ matrix / n
    eigenvalues, eigenvectors = torch.linalg.eigh(second_moment)  # ascending, columns
    order = torch.argsort(eigenvalues, descending=True, stable=True)
    rotation = eigenvectors[:, order].T.contiguous()
    pivots = rotation.abs().argmax(dim=1)
    signs = torch.sign(rotation[torch.arange(dim), pivots])
    rotation = rotation * torch.where(signs == 0, torch.ones_like(signs), signs).unsqueeze(1)
    return rotation.float()


def check_rotation(rotation: np.ndarray | torch.Tensor, dim: int) -> torch.Tensor:
    """``rotation`` as float32 after checking it is a ``[dim, dim]`` orthogonal matrix."""
    matrix = _as_matrix(rotation, "the rotation")
    if tuple(matrix.shape) != (dim, dim):
        raise ValueError(f"the rotation must be [{dim}, {dim}], got {list(matrix.shape)}")
    error = float((matrix @ matrix.T - torch.eye(dim, dtype=torch.float64)).abs().max())
    if error > _ORTHOGONALITY_TOL:
        raise ValueError(f"the rotation is not orthogonal (max |R Rᵀ - I| = {error:.2e})")
    return matrix.float()


def energy_by_prefix(
    vectors: np.ndarray | torch.Tensor,
    rotation: np.ndarray | torch.Tensor | None,
    dims: Iterable[int],
) -> dict[int, float]:
    """Fraction of the vectors' total squared norm in their first m coordinates, for each m
    in ``dims``, after ``rotation`` (``None``: the coordinates as they are)."""
    matrix = _as_matrix(vectors)
    if rotation is not None:
        matrix = matrix @ check_rotation(rotation, matrix.shape[1]).double().T
    per_dim = (matrix**2).sum(dim=0)
    total = float(per_dim.sum())
    out: dict[int, float] = {}
    for m in dims:
        if not 1 <= m <= matrix.shape[1]:
            raise ValueError(f"prefix size must be in 1..{matrix.shape[1]}, got {m}")
        out[m] = float(per_dim[:m].sum()) / total if total > 0 else 0.0
    return out


class RotatedTeacher:
    """A teacher whose every vector comes out rotated: ``y @ Rᵀ``.

    Everything but the three ``encode`` methods (``teacher``, ``dim``, ``name``, ``llm2vec``,
    ...) is the wrapped teacher's own, so callers that share its loaded model still do.
    The raw vector is rotated before any normalisation; a rotation keeps norms, so this
    only fixes the order of two operations that commute.
    """

    def __init__(self, base: Any, rotation: torch.Tensor) -> None:
        self.base = base
        self.rotation = rotation

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this wrapper lacks; "base" itself is guarded so a
        # half-built instance (e.g. during copy or unpickling) cannot recurse forever.
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def _rotated(
        self,
        method: Callable[..., Any],
        texts: Any,
        *,
        normalize_embeddings: bool = True,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        **kwargs: Any,
    ) -> Any:
        _, single = as_text_list(texts)
        raw = method(texts, normalize_embeddings=False, convert_to_tensor=True, **kwargs)
        raw = raw.reshape(-1, self.rotation.shape[0]).float()
        rotated = raw @ self.rotation.to(device=raw.device, dtype=raw.dtype).T
        return format_output(
            rotated,
            single=single,
            normalize_embeddings=normalize_embeddings,
            convert_to_numpy=convert_to_numpy,
            convert_to_tensor=convert_to_tensor,
        )

    def encode(self, texts: Any, **kwargs: Any) -> Any:
        return self._rotated(self.base.encode, texts, **kwargs)

    def encode_query(self, texts: Any, **kwargs: Any) -> Any:
        return self._rotated(self.base.encode_query, texts, **kwargs)

    def encode_document(self, texts: Any, **kwargs: Any) -> Any:
        return self._rotated(self.base.encode_document, texts, **kwargs)

    def __repr__(self) -> str:
        return f"RotatedTeacher({self.base!r})"


def apply_rotation(encoder: L2VGEncoder, rotation: np.ndarray | torch.Tensor) -> L2VGEncoder:
    """Rotate ``encoder``'s vector space by ``rotation`` in place; returns the encoder.

    The alignment head becomes ``W' = R W``, ``b' = R b`` (computed in float64, so the
    fold adds no error beyond the final cast), R is kept as the ``teacher_rotation``
    buffer (saved with the weights, part of the fingerprint) and the config records it.
    A second rotation is refused: the checkpoint's R would no longer describe its space.
    """
    if encoder.config.teacher_rotation or encoder.teacher_rotation is not None:
        raise ValueError("this encoder already has a teacher rotation; rotate the unrotated checkpoint")
    matrix = check_rotation(rotation, encoder.teacher_dim)
    head = encoder.align_head
    with torch.no_grad():
        r64 = matrix.double().to(head.weight.device)
        head.weight.copy_((r64 @ head.weight.double()).to(head.weight.dtype))
        head.bias.copy_((r64 @ head.bias.double()).to(head.bias.dtype))
    # The same float32 R the head was folded with, so both sides share one matrix exactly.
    encoder.teacher_rotation = matrix.to(head.weight.device)
    # A new config object: the old one may be shared with other encoders or a caller.
    encoder.config = EncoderConfig.model_validate({**encoder.config.model_dump(), "teacher_rotation": True})
    return encoder


def read_texts(path: Any) -> list[str]:
    """Texts to fit a rotation on: a ``.jsonl``/``.jsonl.gz`` of strings or of objects with a
    ``"text"`` field, or any other file as one text per non-blank line."""
    from pathlib import Path

    from .jsonl import read_jsonl

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{file} does not exist")
    if file.name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        texts: list[str] = []
        for n, row in enumerate(read_jsonl(file), start=1):
            text = row.get("text") if isinstance(row, dict) else row
            if not isinstance(text, str):
                raise ValueError(f"{file}: row {n} is neither a string nor an object with a 'text' string")
            texts.append(text)
    else:
        texts = file.read_text(encoding="utf-8").splitlines()
    return [t for t in texts if t.strip()]
