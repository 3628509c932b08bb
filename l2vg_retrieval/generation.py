"""Batched greedy generation with the frozen backbone.

Used to decode soft prompts, to write the training responses, and by the
generate-then-encode baseline. Every row stops at its own EOS, which the reference
implementation only managed at batch size 1.

``greedy_decode`` is a plain loop over the model's forward with its KV cache, built for
what greedy decoding needs and nothing more: only the last position's logits are
computed, the next token is an argmax, and a row that has finished leaves the batch (its
KV rows are dropped), so late steps do not pay for rows that are done. Past the prompt's
pass, a plain Llama decoder steps through :mod:`.llama_decode` (the same arithmetic with
fused matmuls, weights pre-packed for oneDNN in bfloat16 and a cache attention reads in
place); other models step through their own forward. ``model.generate``
keeps finished rows in the batch to the end and runs its general logits-processor and
stopping-criteria machinery each step; ``benchmarks/results/generation.json`` holds the
side-by-side measurement (``l2vg bench generation``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from . import llama_decode
from .batching import common_prefix_length, pad_left, positions_from_mask
from .decode_attention import decode_attention
from .kv_cache import CACHE_KWARG, preallocated_cache


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


def _penalise_repeats(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style repetition penalty over the tokens each row has produced so far."""
    seen = torch.gather(logits, 1, history)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, history, seen)


def shared_prefix(
    model: torch.nn.Module, prefix_ids: Sequence[int], attention_mask: torch.Tensor, cache: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``prefix_ids`` (tokens every row starts with) once at batch size 1 and write their
    KV states into ``cache`` for every row of the left-padded ``attention_mask`` ``[B, T]``.

    Returns the mask over prefix and rows, and the rows' position ids ``[B, T]``; with no
    prefix, the mask as given and positions from it.
    """
    from transformers import DynamicCache

    if not prefix_ids:
        return attention_mask, positions_from_mask(attention_mask)
    n_rows = attention_mask.shape[0]
    states = DynamicCache(config=model.config)
    model.get_decoder()(
        input_ids=torch.tensor([list(prefix_ids)], device=attention_mask.device),
        **{CACHE_KWARG: states},
        use_cache=True,
    )
    for index, layer in enumerate(states.layers):
        keys, values = layer.keys.expand(n_rows, -1, -1, -1), layer.values.expand(n_rows, -1, -1, -1)
        cache.update(keys, values, index)
    mask = torch.cat([attention_mask.new_ones((n_rows, len(prefix_ids))), attention_mask], dim=1)
    return mask, positions_from_mask(mask)[:, len(prefix_ids) :]


@torch.inference_mode()
def greedy_decode(
    model: torch.nn.Module,
    *,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor,
    prefix_ids: Sequence[int] = (),
    repetition_penalty: float = 1.0,
) -> list[list[int]]:
    """Greedy continuation of one left-padded batch; returns each row's new ids, EOS excluded.

    Give either ``input_ids`` ``[B, T]`` or ``inputs_embeds`` ``[B, T, H]`` with the
    matching left-padded ``attention_mask``. ``prefix_ids`` are tokens every row starts
    with (a chat template's system turn): they run once, at batch size 1, and their KV
    states are shared by every row.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    # Decode steps attend with one query position: matmuls beat the CPU SDPA kernel there.
    with decode_attention(model):
        return _greedy_decode(
            model, eos_ids=eos_ids, max_new_tokens=max_new_tokens, input_ids=input_ids,
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, prefix_ids=prefix_ids,
            repetition_penalty=repetition_penalty,
        )  # fmt: skip


def _greedy_decode(
    model: torch.nn.Module,
    *,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor,
    prefix_ids: Sequence[int],
    repetition_penalty: float,
) -> list[list[int]]:
    body, head = model.get_decoder(), model.get_output_embeddings()
    device = attention_mask.device
    n_rows = attention_mask.shape[0]
    eos = torch.tensor(sorted(set(eos_ids)), device=device)
    # Past the prompt, a plain Llama decoder steps through the hand-written path, in the
    # prompt pass's own buffers (keys stored transposed for it); anything else steps through
    # the model.
    hand_written = max_new_tokens > 1 and llama_decode.supports(model)
    cache = preallocated_cache(
        model.config,
        len(prefix_ids) + attention_mask.shape[1] + max_new_tokens,
        keys_transposed=hand_written,
    )
    mask, positions = shared_prefix(model, prefix_ids, attention_mask, cache)
    # With no padding (equal-length rows; callers bucket by length) no mask is passed at
    # all: attention then takes its causal fast path instead of building a 4D mask per step.
    unpadded = bool(mask.all())

    def next_logits(**inputs: torch.Tensor | None) -> torch.Tensor:
        hidden = body(
            **inputs,
            attention_mask=None if unpadded else mask,
            **{CACHE_KWARG: cache},
            use_cache=True,
        ).last_hidden_state
        # The LM head on a contiguous [B, H] matrix: a strided [B, 1, H] slice sends
        # torch.nn.functional.linear down a batched-matmul path that first copies the
        # [V, H] weight once per row (seconds per call at batch 64 on a CPU).
        return head(hidden[:, -1].contiguous())

    logits = next_logits(input_ids=input_ids, inputs_embeds=inputs_embeds, position_ids=positions)
    next_pos = positions[:, -1:] + 1
    fast_step = (
        llama_decode.LlamaDecodeStep(model, cache, None if unpadded else mask, mask.shape[1] + max_new_tokens)
        if hand_written
        else None
    )
    if fast_step is not None:
        del cache  # its keys and values now live in the step's buffers
    alive = torch.arange(n_rows, device=device)  # original row index of each batch row
    produced: list[list[int]] = [[] for _ in range(n_rows)]
    history: torch.Tensor | None = None
    for step in range(max_new_tokens):
        if repetition_penalty != 1.0 and history is not None:
            logits = _penalise_repeats(logits.float(), history, repetition_penalty)
        # argmax over fp32: bf16 argmax on a CPU is ~5x slower for [B, vocab] logits (10 ms
        # vs 2 ms at batch 128, 7% of a decode step), and model.generate also picks its
        # greedy token from fp32 logits, so ties break the same way.
        tokens = logits.float().argmax(dim=-1)
        done = torch.isin(tokens, eos)
        for row, token, stop in zip(alive.tolist(), tokens.tolist(), done.tolist(), strict=True):
            if not stop:
                produced[row].append(token)
        if step == max_new_tokens - 1:
            break
        if bool(done.any()):
            # Finished rows leave the batch: later steps do not pay for them.
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            if fast_step is not None:
                fast_step.select(keep)  # the step keeps its own mask
            else:
                cache.batch_select_indices(keep)
                mask = mask[keep]
            alive, tokens, next_pos = alive[keep], tokens[keep], next_pos[keep]
            if history is not None:
                history = history[keep]
        history = tokens[:, None] if history is None else torch.cat([history, tokens[:, None]], dim=1)
        if fast_step is not None:
            logits = fast_step.logits(fast_step(tokens, next_pos[:, 0]))
        else:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            logits = next_logits(input_ids=tokens[:, None], position_ids=next_pos)
        next_pos = next_pos + 1
    return produced


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
        rows = greedy_decode(
            model,
            eos_ids=eos,
            max_new_tokens=max_new_tokens,
            inputs_embeds=chunk,
            attention_mask=mask,
            repetition_penalty=repetition_penalty,
        )
        texts.extend(tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows)  # type: ignore[attr-defined]
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
    shared = common_prefix_length(prompts)
    input_ids, mask = pad_left([list(p[shared:]) for p in prompts], tokenizer.pad_token_id)  # type: ignore[attr-defined]
    device = next(model.parameters()).device
    return greedy_decode(
        model,
        eos_ids=_eos_ids(tokenizer, model),
        max_new_tokens=max_new_tokens,
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        prefix_ids=list(prompts[0][:shared]),
        repetition_penalty=repetition_penalty,
    )


def generate_responses_hf(
    model: torch.nn.Module,
    tokenizer: object,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    repetition_penalty: float = 1.0,
) -> list[list[int]]:
    """The same as :func:`generate_responses` through ``model.generate``: the reference
    the fast loop is checked (identical tokens) and timed against. With a repetition
    penalty the two differ by design: ``model.generate`` also penalises the prompt's
    tokens, the library's loop only the tokens produced (as ``model.generate`` does from
    embeddings, which is where the library uses a penalty: decoding soft prompts)."""
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
    rows: list[list[int]] = []
    for row in out[:, input_ids.shape[1] :].tolist():
        kept: list[int] = []
        for token in row:
            if token in eos:
                break
            kept.append(token)
        rows.append(kept)
    return rows


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
