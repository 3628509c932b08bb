"""Masked next-token prediction (MNTP): teach a bidirectional LM to use what follows.

Tokens are masked as in BERT (probability 0.2; of those 80% become the mask token, 10% a
random token, 10% stay), but the prediction for masked token ``i`` is read from the
logit at position ``i - 1``: the LM head keeps doing what it was trained to do, predict
the next token, now with the whole (masked) text in view. Only masked positions count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .attention import bidirectional_attention, forward_hidden
from .config import MNTPConfig
from .loop import StageResult, StageRunner, batch_indices
from .lora import adapter_parameters, attach_lora, enable_activation_checkpointing, save_adapter

IGNORE = -100


def mask_token_id(tokenizer: Any, token: str = "_") -> int:
    """The id of the mask token: the tokenizer's own mask if ``token`` names it, else ``token``'s id."""
    if getattr(tokenizer, "mask_token", None) == token and tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(
            f"mask token {token!r} is {len(ids)} tokens for this tokenizer; choose a single-token one"
        )
    return int(ids[0])


def pack_blocks(token_rows: Sequence[Sequence[int]], seq_len: int, separator: int) -> torch.Tensor:
    """Concatenate token rows (each followed by ``separator``) into ``[N, seq_len]`` blocks.

    The reference packs wikitext the same way (``group_texts``): no padding at all. The
    trailing partial block is dropped.
    """
    stream: list[int] = []
    for row in token_rows:
        if row:
            stream.extend(row)
            stream.append(separator)
    n_blocks = len(stream) // seq_len
    if n_blocks == 0:
        raise ValueError(f"the corpus holds {len(stream)} tokens, fewer than one block of {seq_len}")
    return torch.tensor(stream[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


def mask_for_mntp(
    input_ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    probability: float,
    special_ids: Sequence[int] = (),
    attention_mask: torch.Tensor | None = None,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked inputs, labels): labels hold the original token where one was chosen, else -100.

    A token can be chosen only if it is real, not special, and has a real token before it
    (its prediction is read at the position before it).
    """
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    eligible = real.clone()
    eligible[:, 0] = False
    eligible[:, 1:] &= real[:, :-1]
    if special_ids:
        eligible &= ~torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    draw = torch.rand(input_ids.shape, generator=generator)
    chosen = eligible & (draw < probability)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    action = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (action < mask_fraction)
    to_random = chosen & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
    masked = input_ids.clone()
    masked[to_mask] = mask_id
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked[to_random] = random_tokens[to_random]
    return masked, labels


def shifted_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each masked token i: (row, i - 1, token). The logit at i - 1 predicts token i."""
    rows, cols = (labels[:, 1:] != IGNORE).nonzero(as_tuple=True)
    return rows, cols, labels[rows, cols + 1]


def mntp_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    """Mean CE over masked tokens, each predicted from the hidden state one position earlier.

    Only the needed positions go through the LM head: full logits of a 16 x 128 batch over
    a 49k vocabulary would be 400 MB.
    """
    rows, cols, targets = shifted_targets(labels)
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    logits = lm_head(hidden[rows, cols]).float()
    return F.cross_entropy(logits, targets)


def mntp_forward(
    model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, accuracy over masked tokens) of ``model`` under bidirectional attention."""
    hidden = forward_hidden(model, input_ids, attention_mask, bidirectional=True)
    head = model.get_output_embeddings()
    loss = mntp_loss(hidden, labels, head)
    with torch.no_grad():
        rows, cols, targets = shifted_targets(labels)
        if targets.numel():
            accuracy = (head(hidden[rows, cols].detach()).argmax(-1) == targets).float().mean()
        else:
            accuracy = torch.tensor(float("nan"))
    return loss, accuracy


def train_mntp(
    model: torch.nn.Module,
    tokenizer: Any,
    blocks: torch.Tensor,
    config: MNTPConfig,
    folder: Path,
    *,
    heldout_blocks: torch.Tensor | None = None,
    seed: int = 0,
    base_model: str | None = None,
    show_progress_bar: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[torch.nn.Module, StageResult]:
    """Train the MNTP LoRA on packed ``blocks`` (resuming from ``folder``); save and return it.

    The adapter is injected into ``model`` in place: give a private copy of the backbone.
    Returns the peft model (adapter not merged) and the stage result; the adapter is
    written to ``folder / "adapter"``.
    """
    model.requires_grad_(False)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model)
    peft_model = attach_lora(model, config.lora, seed=seed)
    mask_id = mask_token_id(tokenizer, config.mask_token)
    special = sorted(set(tokenizer.all_special_ids))
    vocab = int(model.config.vocab_size)

    def masked(rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_for_mntp(
            rows,
            mask_id=mask_id,
            vocab_size=vocab,
            probability=config.mask_probability,
            special_ids=special,
            mask_fraction=config.mask_replace_fraction,
            random_fraction=config.random_replace_fraction,
            generator=generator,
        )

    def step_fn(step: int) -> float:
        idx = batch_indices(step, blocks.shape[0], config.batch_size, seed)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        inputs, labels = masked(blocks[idx], generator)
        model.train()
        micro = config.micro_batch_size or len(idx)
        n_masked = max(1, int((labels[:, 1:] != IGNORE).sum()))
        total = 0.0
        for start in range(0, len(idx), micro):
            part = slice(start, start + micro)
            # Weighted by masked tokens, so the summed gradient is the full batch's token mean.
            share = int((labels[part, 1:] != IGNORE).sum()) / n_masked
            if share == 0:
                continue
            loss, _ = mntp_forward(model, inputs[part], labels[part], torch.ones_like(inputs[part]))
            (share * loss).backward()
            total += share * float(loss.detach())
        model.eval()
        return total

    evaluate = None
    if heldout_blocks is not None and heldout_blocks.shape[0] > 0:
        held = heldout_blocks[: config.eval_blocks]
        held_inputs, held_labels = masked(held, torch.Generator().manual_seed(seed + 424242))

        def evaluate() -> dict[str, Any]:
            model.eval()
            losses, accs, weights = [], [], []
            with torch.no_grad():
                for start in range(0, held.shape[0], config.micro_batch_size or config.batch_size):
                    part = slice(start, start + (config.micro_batch_size or config.batch_size))
                    loss, acc = mntp_forward(
                        model, held_inputs[part], held_labels[part], torch.ones_like(held_inputs[part])
                    )
                    n = int((held_labels[part][:, 1:] != IGNORE).sum())
                    losses.append(float(loss) * n)
                    accs.append(float(acc) * n)
                    weights.append(n)
            total = max(1, sum(weights))
            return {
                "heldout_loss": round(sum(losses) / total, 5),
                "heldout_accuracy": round(sum(accs) / total, 5),
            }

    runner = StageRunner(
        stage="mntp",
        folder=folder,
        peft_model=peft_model,
        params=adapter_parameters(peft_model),
        settings=config,
        seed=seed,
        identity={"n_blocks": int(blocks.shape[0]), "mask_token_id": mask_id},
    )
    # Held for the whole run: a gradient-checkpointed layer is recomputed in the backward
    # pass, after its forward call has returned.
    with bidirectional_attention(model):
        result = runner.run(
            step_fn,
            evaluate=evaluate,
            eval_every=config.eval_every,
            show_progress_bar=show_progress_bar,
            on_step=on_step,
        )
    save_adapter(folder / "adapter", peft_model, base_model=base_model)
    return peft_model, result
