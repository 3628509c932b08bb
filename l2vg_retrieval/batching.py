"""The encode loop every encoder shares: length-sorted batches, progress, output shape."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .inputs import as_text_list

# Past this many batches a progress bar is worth its line of output.
_AUTO_PROGRESS_MIN_BATCHES = 8


def run_batched(
    items: Sequence[Any],
    lengths: Sequence[int],
    batch_fn: Callable[[list[Any]], torch.Tensor],
    *,
    batch_size: int,
    show_progress_bar: bool | None,
    desc: str,
) -> torch.Tensor:
    """Apply ``batch_fn`` to length-sorted batches and return rows in input order.

    Sorting by length keeps padding (wasted compute) small; results do not depend on it
    because every encoder here is batch invariant.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    n_batches = (len(items) + batch_size - 1) // batch_size
    show = show_progress_bar if show_progress_bar is not None else n_batches >= _AUTO_PROGRESS_MIN_BATCHES
    outputs: list[torch.Tensor] = []
    with tqdm(total=len(items), desc=desc, disable=not show, unit="text") as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            outputs.append(batch_fn([items[i] for i in idx]).detach().float().cpu())
            bar.update(len(idx))
    stacked = torch.cat(outputs)
    result = torch.empty_like(stacked)
    result[torch.tensor(order)] = stacked
    return result


def format_output(
    embeddings: torch.Tensor,
    *,
    single: bool,
    normalize_embeddings: bool,
    convert_to_numpy: bool,
    convert_to_tensor: bool,
) -> np.ndarray | torch.Tensor | list[torch.Tensor]:
    """sentence-transformers' output conventions: one string in, one vector out."""
    if normalize_embeddings:
        embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
    if single:
        embeddings = embeddings[0]
    if convert_to_tensor:
        return embeddings
    if convert_to_numpy:
        return embeddings.numpy().astype(np.float32, copy=False)
    return list(embeddings) if not single else embeddings


def empty_output(dim: int, *, convert_to_numpy: bool, convert_to_tensor: bool) -> Any:
    """The defined result for an empty list: zero rows of the right width."""
    empty = torch.zeros((0, dim), dtype=torch.float32)
    if convert_to_tensor:
        return empty
    if convert_to_numpy:
        return empty.numpy()
    return []


def pad_left(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists; returns (input_ids, attention_mask)."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) :] = 1
    return input_ids, mask


def own_positions(batch: Sequence[Sequence[int]], head: Sequence[int], width: int) -> torch.Tensor:
    """``[B, width]`` float mask of each left-padded row's own positions: its last
    ``len(row) - common_prefix_length([row], head)`` ones, i.e. everything after the
    template + prompt ``head`` (a row's text and the template's tail)."""
    own = torch.zeros((len(batch), width), dtype=torch.float32)
    for row, ids in enumerate(batch):
        n_own = min(len(ids) - common_prefix_length([ids], head), width)
        own[row, width - n_own :] = 1.0
    return own


def common_prefix_length(rows: Sequence[Sequence[int]], hint: Sequence[int] | None = None) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own.

    ``hint`` (a known template + instruction head) bounds the prefix too: for a single
    text, a bare common prefix would be that whole text.
    """
    limit = min(len(r) for r in rows) - 1
    compared = list(rows)
    if hint is not None:
        limit = min(limit, len(hint))
        compared.append(hint)
    first = rows[0]
    length = 0
    while length < limit and all(r[length] == first[length] for r in compared):
        length += 1
    return max(length, 0)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def encode_texts(
    texts: Any,
    *,
    dim: int,
    prepare: Callable[[list[str]], Sequence[Any]],
    embed: Callable[[list[Any]], torch.Tensor],
    lock: threading.RLock,
    desc: str,
    batch_size: int,
    normalize_embeddings: bool,
    show_progress_bar: bool | None,
    convert_to_numpy: bool,
    convert_to_tensor: bool,
) -> Any:
    """The body every encoder's ``encode`` shares: validate, prepare, batch, format.

    ``prepare`` turns the validated texts into model inputs (token ids or strings), whose
    ``len`` orders the batches; ``embed`` maps one batch of them to ``[B, dim]``.
    """
    items, single = as_text_list(texts)
    if not items:
        return empty_output(dim, convert_to_numpy=convert_to_numpy, convert_to_tensor=convert_to_tensor)
    prepared = prepare(items)
    with lock, torch.inference_mode():
        out = run_batched(
            prepared,
            [len(p) for p in prepared],
            embed,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            desc=desc,
        )
    return format_output(
        out,
        single=single,
        normalize_embeddings=normalize_embeddings,
        convert_to_numpy=convert_to_numpy,
        convert_to_tensor=convert_to_tensor,
    )


# Padded prompt tokens per generation batch (rows x longest prompt). Measured on the
# generation benchmark's longest-prompt batch (128 rows of 59-204 tokens, bf16, 2 cores):
# 23.7 s as one batch, 14.2 s under 8,192 tokens (2 batches), 13.8 s under 6,144, 14.3 s
# under 4,096.
GENERATION_BATCH_TOKENS = 8192


def length_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    window: int | None = None,
    max_tokens: int | None = GENERATION_BATCH_TOKENS,
) -> list[list[int]]:
    """Index batches for generation: rows of one exact length together where possible.

    An equal-length batch needs no padding and no attention mask, so attention runs on its
    causal fast path. Within each ``window`` of consecutive items, full batches of a single
    length come first, then the leftovers in length order (little padding). Windows keep
    the input order roughly intact, so a run stopped early holds a fair sample of the
    input rather than only its shortest items. ``max_tokens`` caps a batch's padded size
    (rows x its longest row; ``None``: no cap): without it the longest prompts of a window share one batch
    of ``batch_size`` rows padded to the longest of them, and that batch alone took 42% of
    a generation run here.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")

    def rows_for(length: int) -> int:
        return batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // max(length, 1)))

    window = window or batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(lengths), window):
        groups: dict[int, list[int]] = {}
        for i in range(start, min(start + window, len(lengths))):
            groups.setdefault(lengths[i], []).append(i)
        leftovers: list[int] = []
        for length in sorted(groups):
            members, size = groups[length], rows_for(length)
            whole = len(members) - len(members) % size
            batches.extend(members[k : k + size] for k in range(0, whole, size))
            leftovers.extend(members[whole:])
        current: list[int] = []
        for i in leftovers:  # ascending length: the newest row is the longest
            if current and len(current) + 1 > rows_for(lengths[i]):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
    return batches
