"""Batched greedy generation with the frozen backbone.

Used to decode soft prompts, to write the training responses, and by the
generate-then-encode baseline. Every row stops at its own EOS (transformers pads rows
that finished early), which the reference implementation only managed at batch size 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from .batching import pad_left


def _eos_ids(tokenizer: object, model: torch.nn.Module) -> list[int]:
    """Every id that ends a turn for this backbone, read from it rather than hard-coded."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))  # type: ignore[attr-defined]
    return sorted(ids)


def generate_from_embeds(
    model: torch.nn.Module,
    tokenizer: object,
    embeds: torch.Tensor,
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    repetition_penalty: float = 1.0,
) -> list[str]:
    """Greedy continuation of equal-length prefix embeddings ``[N, T, H]``."""
    eos = _eos_ids(tokenizer, model)
    texts: list[str] = []
    for start in range(0, embeds.shape[0], batch_size):
        chunk = embeds[start : start + batch_size]
        mask = torch.ones(chunk.shape[:2], dtype=torch.long, device=chunk.device)
        with torch.inference_mode():
            out = model.generate(
                inputs_embeds=chunk,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
                repetition_penalty=repetition_penalty,
            )
        texts.extend(_decode_rows(tokenizer, out, eos))
    return texts


def generate_responses(
    model: torch.nn.Module,
    tokenizer: object,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    repetition_penalty: float = 1.0,
) -> list[list[int]]:
    """Greedy responses to already-templated prompt ids, one batch; returns new token ids.

    Left padding keeps every row's last prompt token at the end, where generation starts.
    """
    eos = _eos_ids(tokenizer, model)
    input_ids, mask = pad_left(list(prompts), tokenizer.pad_token_id)  # type: ignore[attr-defined]
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
            repetition_penalty=repetition_penalty,
        )
    new = out[:, input_ids.shape[1] :]
    rows: list[list[int]] = []
    for row in new.tolist():
        kept: list[int] = []
        for token in row:
            if token in eos:
                break
            kept.append(token)
        rows.append(kept)
    return rows


def _decode_rows(tokenizer: object, out: torch.Tensor, eos: list[int]) -> list[str]:
    texts = []
    for row in out.tolist():
        kept = []
        for token in row:
            if token in eos:
                break
            kept.append(token)
        texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())  # type: ignore[attr-defined]
    return texts


_SENTENCE_SPLIT = re.compile(r"(?<=[.!?\n])\s+")


def trim_repetition(text: str) -> str:
    """Cut a response at the first sentence it repeats verbatim.

    Small models loop under greedy decoding ("I'm sorry. I'm sorry. ..."); the loop adds
    no meaning, only tokens that the reconstruction loss would spend its capacity on.
    """
    seen: set[str] = set()
    kept: list[str] = []
    for sentence in _SENTENCE_SPLIT.split(text.strip()):
        key = sentence.strip().lower()
        if key and key in seen:
            break
        seen.add(key)
        kept.append(sentence)
    return " ".join(kept).strip()
