"""Closed-form refit of the alignment head, after the tokens are trained.

The embedding is ``mean_K(W·s_k + b) = W·mean_K(s_k) + b``: linear in the mean soft prompt.
With the special tokens and reconstruction head fixed, the alignment MSE is therefore an
ordinary least-squares problem in (W, b), which a ridge solve answers exactly, where SGD
on a few hundred CPU steps only approaches it (and, at a learning rate high enough for
the tokens, jitters around it). Same loss, same head, better optimiser.

With latent-attention pooling the embedding is ``W·pool(s) + b``: still linear in a fixed
feature once the pooler is trained, so the same solve applies to the pooled vector. A
Matryoshka (nested) MSE only weights each output dimension differently; every column of
the head is its own least-squares problem, so the unregularised solution is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .trainer import TrainExample

POOL_CHUNK = 256


def mean_soft_prompts(
    encoder: object, queries: Sequence[str], prompt: str | None, *, batch_size: int = 32
) -> torch.Tensor:
    """``[N, H]`` soft prompts pooled over K as the encoder pools them (a mean, or latent
    attention), in fp32: the alignment head's input (length-sorted batches)."""
    soft = encoder.soft_prompts(  # type: ignore[attr-defined]
        list(queries), prompt=prompt, batch_size=batch_size, show_progress_bar=None
    )
    # Pooled in chunks: latent-attention pooling's scores are [rows, heads, K, latents].
    with torch.inference_mode():
        return torch.cat(
            [
                encoder.pooled_soft_prompts(soft[start : start + POOL_CHUNK]).float()  # type: ignore[attr-defined]
                for start in range(0, soft.shape[0], POOL_CHUNK)
            ]
        )


def solve_ridge(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Centre, so the bias is the mean target and the ridge penalty leaves it alone.
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    scale = xc.pow(2).sum(0).mean()  # ridge relative to the feature scale
    gram = xc.T @ xc + ridge * scale * torch.eye(x.shape[1], dtype=x.dtype)
    weight = torch.linalg.solve(gram, xc.T @ yc).T  # [D, H]
    return weight, y_mean - weight @ x_mean


def _mse(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    return torch.mean((x @ weight.T + bias - y) ** 2).item()


def _cosine(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(x @ weight.T + bias, y, dim=-1).mean().item()


@dataclass
class RidgeChoice:
    """The ridge strength a validation slice chose, and what it was chosen on."""

    ridge: float
    validation_mse: dict[float, float]
    is_val: torch.Tensor  # [rows] bool: the validation rows (every reading of an example)
    validation_head: tuple[torch.Tensor, torch.Tensor]  # (weight, bias) solved without them


def choose_ridge(
    x: torch.Tensor,
    y: torch.Tensor,
    n_views: int,
    *,
    ridges: Sequence[float],
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> RidgeChoice:
    """Pick the ridge strength by validation MSE. ``x`` holds ``n_views`` readings of the same
    examples stacked view after view; validation is by example, so no example sits on both
    sides with another reading."""
    n = x.shape[0] // n_views
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[perm[: max(1, int(n * validation_fraction))]] = True
    is_val = is_val.repeat(n_views)
    scores: dict[float, float] = {}
    heads: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    for ridge in ridges:
        heads[ridge] = solve_ridge(x[~is_val], y[~is_val], ridge)
        scores[ridge] = _mse(x[is_val], y[is_val], *heads[ridge])
    best = min(scores, key=scores.__getitem__)
    return RidgeChoice(best, scores, is_val, heads[best])


def refit_alignment_head(
    encoder: object,
    examples: Sequence[TrainExample],
    prompts: Sequence[str | None],
    *,
    ridges: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    validation_fraction: float = 0.1,
    seed: int = 0,
    batch_size: int = 32,
    document_prompt: str | None = None,
) -> dict[str, Any]:
    """Solve the alignment head by ridge regression over every (example, prompt) pair.

    With ``document_prompt`` (a run trained with the document-side loss) each example also
    contributes its response text read with that prompt, toward the same target: the head
    is shared by queries and generative documents, so it is solved for both.

    The ridge strength is chosen on a seeded validation slice of the *training* examples
    (never the held-out evaluation queries), then the head is solved on all of them.
    The solved head replaces the current one only if it has the higher validation cosine.
    Returns the alignment MSE before and after, the chosen ridge and whether it was kept.
    """
    views = [([ex.query for ex in examples], prompt) for prompt in prompts]
    if document_prompt is not None:
        views.append(([ex.response for ex in examples], document_prompt))
    x = torch.cat(
        [mean_soft_prompts(encoder, texts, prompt, batch_size=batch_size) for texts, prompt in views]
    )
    x = x.double()
    y = torch.stack([ex.target.float() for ex in examples]).double().repeat(len(views), 1)
    head = encoder.align_head  # type: ignore[attr-defined]
    before = _mse(x, y, head.weight.double(), head.bias.double())
    choice = choose_ridge(x, y, len(views), ridges=ridges, validation_fraction=validation_fraction, seed=seed)
    is_val, best = choice.is_val, choice.ridge
    # Retrieval scores directions. A head trained by SGD on the cosine loss can beat the
    # least-squares head on direction; the ridge head is kept only if its validation
    # cosine (training queries held back from the solve) is higher.
    cosine_ridge = _cosine(x[is_val], y[is_val], *choice.validation_head)
    cosine_sgd = _cosine(x[is_val], y[is_val], head.weight.double(), head.bias.double())
    weight, bias = solve_ridge(x, y, best)
    after = _mse(x, y, weight, bias)
    kept = cosine_ridge > cosine_sgd
    if kept:
        with torch.no_grad():
            head.weight.copy_(weight.to(head.weight.dtype))
            head.bias.copy_(bias.to(head.bias.dtype))
    return {
        "kept_refit": kept,
        "validation_cosine_sgd_head": cosine_sgd,
        "validation_cosine_ridge_head": cosine_ridge,
        "align_mse_before_refit": before,
        "align_mse_after_refit": after,
        "validation_mse_by_ridge": {str(k): v for k, v in choice.validation_mse.items()},
        "ridge": best,
        "refit_rows": int(x.shape[0]),
    }
