"""Text → token ids → padded batches, with the mask of the tokens that are mean-pooled.

An instruction (``prompt``) is tokenized apart from the text and placed before it; it is
read by every token (attention is bidirectional) but left out of the mean, as LLM2Vec does
with its instructions, so the embedding is an average over the text's own tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..batching import pad_left
from ..inputs import PromptTemplate, clean_text, prompt_prefix_ids

# Characters kept per allowed token before tokenizing: bounds tokenizer work on huge input.
_CHARS_PER_TOKEN_BOUND = 16


@dataclass(frozen=True)
class TokenizedText:
    """One row: ``ids`` (prefix + prompt + text) and where the pooled text starts."""

    ids: tuple[int, ...]
    pool_start: int

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Batch:
    """A left-padded batch; ``pool_mask`` is 1.0 on the tokens that are averaged."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pool_mask: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.pool_mask.to(device))


def tokenize_texts(
    tokenizer: object, texts: Sequence[str], *, prompt: str | None = None, max_tokens: int = 512
) -> list[TokenizedText]:
    """Token ids per text; only the text is truncated (to ``max_tokens``), never the prompt."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    # No chat template: LLM2Vec reads text as text. The tokenizer's own BOS, if it has one.
    template = PromptTemplate.for_tokenizer(tokenizer, use_chat_template=False)
    head = prompt_prefix_ids(tokenizer, template, prompt)
    cut = [clean_text(t[: max_tokens * _CHARS_PER_TOKEN_BOUND]) for t in texts]
    encoded = tokenizer(cut, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    rows = []
    for ids in encoded:
        ids = list(ids[:max_tokens])
        # A text that tokenizes to nothing is pooled over whatever the row holds.
        rows.append(TokenizedText(tuple(head + ids), len(head) if ids else 0))
    return rows


def collate(rows: Sequence[TokenizedText], pad_id: int) -> Batch:
    input_ids, attention_mask = pad_left([list(r.ids) for r in rows], pad_id)
    pool_mask = torch.zeros(attention_mask.shape, dtype=torch.float32)
    width = attention_mask.shape[1]
    for i, row in enumerate(rows):
        pool_mask[i, width - len(row) + row.pool_start :] = 1.0
    return Batch(input_ids, attention_mask, pool_mask)


def mean_pool(hidden: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``[B, L, H]`` over the positions where ``pool_mask`` is 1."""
    weights = pool_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
