"""The paper's recipe: reconstruction CE + alignment MSE, frozen backbone, tokens + heads train.

One backbone serves both roles: its body encodes (hidden states at the compression
tokens) and the very same model, fed the soft prompts as ``inputs_embeds``, scores the
response for the reconstruction loss. Checkpoints hold only trainable tensors, the
optimizer state and a JSON of the step, so resuming is exact and nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..encoder import L2VGEncoder
from ..runtime import peak_rss_mb, release_free_memory
from .config import TrainConfig
from .state import flatten_optimizer, restore_optimizer, truncate_log

STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.safetensors"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainExample:
    query: str
    response_ids: tuple[int, ...]  # ends with the backbone's EOS when the response finished
    target: torch.Tensor
    response: str = ""  # the response text, for the document-side alignment loss


@dataclass
class TrainResult:
    steps: int
    final_recon: float | None  # None when the run ended in an alignment-only step
    final_align: float | None  # None when the run took no steps (a refit-only stage)
    wall_seconds: float
    peak_rss_mb: float
    checkpoint: Path
    resumed_from_step: int | None = None  # the checkpoint step this run continued from


def make_examples(
    encoder: L2VGEncoder,
    responses: dict[str, dict[str, Any]],
    targets: dict[str, torch.Tensor],
    ids: list[str],
    max_response_tokens: int,
) -> list[TrainExample]:
    """Tokenize responses once; the EOS is the tokenizer's own, taught only on finished ones."""
    tokenizer = encoder.tokenizer
    eos = tokenizer.eos_token_id
    examples = []
    for row_id in ids:
        row = responses[row_id]
        tokens = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        finished = bool(row.get("finished", True)) and len(tokens) <= max_response_tokens
        tokens = tokens[:max_response_tokens] + ([eos] if finished else [])
        if not tokens:
            continue
        examples.append(TrainExample(row["query"], tuple(tokens), targets[row_id], row["response"]))
    return examples


def reconstruction_loss(
    encoder: L2VGEncoder, soft: torch.Tensor, responses: list[tuple[int, ...]]
) -> torch.Tensor:
    """CE of the frozen LM on each response, teacher-forced, soft prompts as the only prefix."""
    lm = encoder.lm
    n_batch, k = soft.shape[0], soft.shape[1]
    width = max(len(r) for r in responses)
    ids = torch.full((n_batch, width), encoder.tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((n_batch, k + width), -100, dtype=torch.long)
    mask = torch.zeros((n_batch, k + width), dtype=torch.long)
    for row, response in enumerate(responses):
        ids[row, : len(response)] = torch.tensor(response)
        labels[row, k : k + len(response)] = torch.tensor(response)
        mask[row, : k + len(response)] = 1
    device = encoder.device_
    token_embeds = lm.get_input_embeddings()(ids.to(device))
    inputs = torch.cat([soft.to(token_embeds.dtype), token_embeds], dim=1)
    # Right padding: positions are simply 0..T-1, pads sit after every real token.
    out = lm(inputs_embeds=inputs, attention_mask=mask.to(device), use_cache=False)
    logits = out.logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1).to(device))


def alignment_loss(embedding: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(embedding, targets, dim=-1)).mean()
    return F.mse_loss(embedding, targets)


def nested_alignment_loss(
    embedding: torch.Tensor, targets: torch.Tensor, kind: str, dims: Sequence[int] | None
) -> torch.Tensor:
    """The alignment loss averaged over Matryoshka prefixes: each first-m slice of the
    embedding is aligned to the same slice of the target, so a truncated vector is trained
    as an embedding in its own right. ``None`` is the plain full-vector loss."""
    if not dims:
        return alignment_loss(embedding, targets, kind)
    losses = [alignment_loss(embedding[:, :m], targets[:, :m], kind) for m in dims]
    return torch.stack(losses).mean()


def check_matryoshka_dims(dims: Sequence[int] | None, full: int) -> None:
    """Refuse prefix sizes the embedding does not have (a slice past the end would be
    silently shorter, not an error)."""
    too_big = [m for m in dims or () if m > full]
    if too_big:
        raise ValueError(f"matryoshka_dims {too_big} exceed the embedding's {full} dimensions")


def _aligned(
    encoder: L2VGEncoder,
    ids: list[list[int]],
    batch: list[TrainExample],
    align_kind: str,
    matryoshka_dims: Sequence[int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft prompts, alignment loss to the batch's targets) for already-tokenized inputs:
    the one path both the query side and the document side are trained through."""
    soft = encoder.soft_prompts_from_ids(ids)
    embedding = encoder.embed_soft_prompts(soft)
    targets = torch.stack([ex.target for ex in batch]).to(embedding.device)
    return soft, nested_alignment_loss(embedding, targets, align_kind, matryoshka_dims)


def compute_losses(
    encoder: L2VGEncoder,
    batch: list[TrainExample],
    prompts: list[str | None],
    *,
    align_kind: str = "mse",
    with_recon: bool = True,
    matryoshka_dims: Sequence[int] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(reconstruction CE or None when skipped, alignment loss) for one batch; with
    ``matryoshka_dims`` the alignment loss is averaged over those prefixes."""
    ids = [encoder.tokenize([ex.query], prompt)[0] for ex, prompt in zip(batch, prompts, strict=True)]
    soft, align = _aligned(encoder, ids, batch, align_kind, matryoshka_dims)
    recon = reconstruction_loss(encoder, soft, [ex.response_ids for ex in batch]) if with_recon else None
    return recon, align


def document_alignment_loss(
    encoder: L2VGEncoder,
    batch: list[TrainExample],
    *,
    align_kind: str = "mse",
    matryoshka_dims: Sequence[int] | None = None,
) -> torch.Tensor:
    """The document side: the student's embedding of the *response text itself*, read with
    the document prompt, aligned to the teacher's embedding of that same text (the target
    the query is aligned to). Generative documents are embedded exactly this way, so this
    trains the path documents take, and it gives the encoding LoRA a plain
    text-to-teacher distillation signal beside the harder query-to-answer one. With
    ``matryoshka_dims`` it is nested like the query side, so truncated document vectors are
    trained as embeddings too."""
    if any(not ex.response for ex in batch):
        raise ValueError("the document alignment loss needs each example's response text")
    ids = encoder.tokenize([ex.response for ex in batch], encoder.config.document_prompt)
    return _aligned(encoder, ids, batch, align_kind, matryoshka_dims)[1]


def split_micro_batches(
    n: int, *, max_items: int | None, max_tokens: int | None, lengths: Sequence[int] | None
) -> list[list[int]]:
    """Index groups that together are one batch (gradient accumulation).

    Without a token cap: consecutive runs of ``max_items`` (or one group). With one:
    examples sorted longest first (so a group's padded width is its first example's
    length and padding stays small) and grouped while ``size x width <= max_tokens`` and
    ``size <= max_items``; an example longer than the cap gets a group of its own.
    """
    if max_tokens is None:
        size = max_items or n
        return [list(range(start, min(start + size, n))) for start in range(0, n, size)]
    if lengths is None or len(lengths) != n:
        raise ValueError("a token cap on micro-batches needs one length per example")
    groups: list[list[int]] = []
    for i in sorted(range(n), key=lambda j: (-lengths[j], j)):
        group = groups[-1] if groups else None
        if (
            group is None
            or (len(group) + 1) * lengths[group[0]] > max_tokens
            or (max_items is not None and len(group) >= max_items)
        ):
            groups.append([i])
        else:
            group.append(i)
    return groups


def select_parameters(encoder: L2VGEncoder, prefixes: Sequence[str] | None) -> list[torch.nn.Parameter]:
    """The parameters a run trains; with ``prefixes`` the others get ``requires_grad=False``
    (an unknown prefix is an error, not a run that silently trains nothing)."""
    named = encoder.named_trainable_parameters()
    if prefixes is None:
        return [p for _, p in named]
    unknown = [pre for pre in prefixes if not any(n.startswith(pre) for n, _ in named)]
    if unknown:
        names = sorted({n.split(".")[0] for n, _ in named})
        raise ValueError(f"train_only {unknown} matches no trainable tensor (parts: {names})")
    chosen, frozen_lora = [], set()
    for name, param in named:
        keep = name.startswith(tuple(prefixes))
        param.requires_grad_(keep)
        if keep:
            chosen.append(param)
        elif name.startswith("encoder_lora."):
            frozen_lora.add(name.removeprefix("encoder_lora."))
    if encoder.adapter is not None:
        encoder.adapter.freeze(frozen_lora)  # its enable/disable switch resets requires_grad
    return chosen


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then linear decay to zero at the last step."""
    optim = config.optim
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    remaining = max(1, optim.steps - optim.warmup_steps)
    return optim.lr * max(0.0, 1.0 - (step - optim.warmup_steps) / remaining)


def batch_for_step(step: int, n_examples: int, config: TrainConfig) -> tuple[list[int], list[bool]]:
    """Example indices and instruction flags for a step: a pure function of (seed, step).

    Each epoch is a seeded permutation; deriving everything from the step number is what
    makes a resumed run take exactly the steps an uninterrupted run would have taken.
    """
    size = config.optim.batch_size
    per_epoch = max(1, n_examples // size)
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(config.seed * 7919 + epoch))
    idx = perm[offset * size : (offset + 1) * size].tolist()
    flags = torch.rand(len(idx), generator=torch.Generator().manual_seed(config.seed * 104729 + step))
    return idx, (flags < config.instruction_fraction).tolist()


class Trainer:
    def __init__(self, encoder: L2VGEncoder, examples: list[TrainExample], config: TrainConfig) -> None:
        if len(examples) < config.optim.batch_size:
            raise ValueError(
                f"{len(examples)} training examples is fewer than one batch ({config.optim.batch_size})"
            )
        check_matryoshka_dims(config.matryoshka_dims, encoder.full_dim)
        self.encoder = encoder
        self.examples = examples
        self.config = config
        # Every trainable part, including option modules (latent pooling, a learned exit
        # norm), or only those named by ``train_only``; the rest is frozen for the run so
        # autograd does not even record the passes that only they would need.
        self.params = select_parameters(encoder, config.train_only)
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.optim.lr, weight_decay=config.optim.weight_decay
        )
        self.step = 0
        self.last_document_align: float | None = None  # the last step's document-side loss
        self.resumed_from_step: int | None = None
        self.checkpoint_dir = config.output_dir / "checkpoints"
        self.log_path = config.output_dir / "loss_log.jsonl"

    def train_step(self) -> tuple[float | None, float]:
        """One optimiser step; returns (reconstruction CE, or None in an alignment-only step,
        alignment loss)."""
        config = self.config
        idx, flags = batch_for_step(self.step, len(self.examples), config)
        batch = [self.examples[i] for i in idx]
        prompts = [config.encoder.query_instruction if f else None for f in flags]
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, config)
        with_recon = self.step >= config.align_only_steps and config.recon_weight > 0
        self.encoder.train()
        self.optimizer.zero_grad(set_to_none=True)
        # Micro-batches bound activation memory (a LoRA keeps the text's activations for
        # the backward pass); gradients add up to the full batch's, each micro-batch's
        # terms weighted by its share of what they average over.
        lengths = None
        if config.optim.micro_batch_tokens is not None:
            lengths = [
                self._tokens(ex, prompt, with_recon) for ex, prompt in zip(batch, prompts, strict=True)
            ]
        with_document = config.document_align_weight > 0
        # The reconstruction CE is a mean over answer tokens, so its micro-batch share is
        # one of tokens; alignment and document terms are means over examples.
        answer_tokens = max(1, sum(len(ex.response_ids) for ex in batch))
        recon_sum, align_sum, document_sum = 0.0, 0.0, 0.0
        for part in split_micro_batches(
            len(batch),
            max_items=config.optim.micro_batch_size,
            max_tokens=config.optim.micro_batch_tokens,
            lengths=lengths,
        ):
            share = len(part) / len(batch)
            recon, align = compute_losses(
                self.encoder,
                [batch[i] for i in part],
                [prompts[i] for i in part],
                align_kind=config.align_loss,
                with_recon=with_recon,
                matryoshka_dims=config.matryoshka_dims,
            )
            loss = share * config.align_weight * align
            if recon is not None:
                token_share = sum(len(batch[i].response_ids) for i in part) / answer_tokens
                loss = loss + token_share * config.recon_weight * recon
                recon_sum += token_share * float(recon.detach())
            if with_document:
                document = document_alignment_loss(
                    self.encoder,
                    [batch[i] for i in part],
                    align_kind=config.align_loss,
                    matryoshka_dims=config.matryoshka_dims,
                )
                loss = loss + share * config.document_align_weight * document
                document_sum += share * float(document.detach())
            loss.backward()
            align_sum += share * float(align.detach())
        torch.nn.utils.clip_grad_norm_(self.params, config.optim.grad_clip)
        self.optimizer.step()
        self.encoder.eval()
        # Cached prefix states were computed with the old weights (LoRA).
        self.encoder.clear_caches()
        self.step += 1
        self.last_document_align = document_sum if with_document else None
        # One step can leave gigabytes of freed activations fragmented in glibc's heap; a
        # trim costs milliseconds (runtime.release_free_memory).
        release_free_memory()
        return (recon_sum if with_recon else None), align_sum

    def _tokens(self, example: TrainExample, prompt: str | None, with_recon: bool) -> int:
        """Positions one example puts through the graph: its encoding pass (prompt, query,
        special tokens) and, in a joint step, the reconstruction pass (soft prompts, answer)."""
        encoder = self.encoder
        n = len(encoder.tokenize([example.query], prompt)[0]) + encoder.config.n_special
        if with_recon:
            n += encoder.config.n_compression + len(example.response_ids)
        if self.config.document_align_weight > 0:
            # The document pass: prompt, answer text and special tokens again.
            n += len(encoder.tokenize([example.response], encoder.config.document_prompt)[0])
            n += encoder.config.n_special
        return n

    # -------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        folder = self.checkpoint_dir / f"step-{self.step:07d}"
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        self.encoder.save_pretrained(tmp)
        tensors, scalars = flatten_optimizer(self.optimizer)
        save_file(tensors, str(tmp / OPTIM_FILE))
        (tmp / STATE_FILE).write_text(json.dumps({"step": self.step, "optimizer": scalars}, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        return folder

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoint_dir.is_dir():
            return None
        # Only finished folders: a run killed inside save_checkpoint leaves "step-N.tmp"
        # (complete or not) that must not win over the last renamed one.
        done = sorted(
            (int(p.name.removeprefix("step-")), p)
            for p in self.checkpoint_dir.glob("step-*")
            if re.fullmatch(r"step-\d+", p.name) and (p / STATE_FILE).is_file()
        )
        return done[-1][1] if done else None

    def resume(self, folder: Path) -> None:
        from ..encoder import _load_weights

        self.encoder.load_trainable_state(_load_weights(folder))
        state = json.loads((folder / STATE_FILE).read_text())
        restore_optimizer(self.optimizer, load_file(str(folder / OPTIM_FILE)), state["optimizer"])
        self.step = int(state["step"])

    # -------------------------------------------------------------- loop
    def run(self, *, show_progress_bar: bool = True, evaluate: Any = None) -> TrainResult:
        config = self.config
        start = time.time()
        latest = self.latest_checkpoint()
        if latest is not None:
            self.resume(latest)
            self.resumed_from_step = self.step
            logger.info("resuming from %s at step %d", latest, self.step)
        last = truncate_log(self.log_path, self.step)
        # A resumed run continues the log's clock and, if nothing is left to do, reports
        # the losses the log ended with.
        offset = float(last.get("elapsed", 0.0)) if last else 0.0
        recon: float | None = float(last["recon"]) if last and last.get("recon") is not None else None
        align: float | None = float(last["align"]) if last else None
        with (
            self.log_path.open("a") as log,
            tqdm(
                total=config.optim.steps, initial=self.step, desc="train", disable=not show_progress_bar
            ) as bar,
        ):
            while self.step < config.optim.steps:
                recon, align = self.train_step()
                if not math.isfinite(align) or (recon is not None and not math.isfinite(recon)):
                    raise FloatingPointError(f"loss became non-finite at step {self.step}: {recon}, {align}")
                record = {
                    "step": self.step,
                    "recon": round(recon, 5) if recon is not None else None,
                    "align": round(align, 7),
                    **(
                        {"document_align": round(self.last_document_align, 7)}
                        if self.last_document_align is not None
                        else {}
                    ),
                    "lr": lr_at(self.step - 1, config),
                    "elapsed": round(offset + time.time() - start, 2),
                }
                if evaluate is not None and config.eval_every and self.step % config.eval_every == 0:
                    record["eval"] = evaluate(self.encoder)
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(recon="-" if recon is None else f"{recon:.3f}", align=f"{align:.5f}")
                bar.update(1)
                if self.step % config.checkpoint_every == 0 or self.step == config.optim.steps:
                    self.save_checkpoint()
        return TrainResult(
            steps=self.step,
            final_recon=recon,
            final_align=align,
            wall_seconds=offset + time.time() - start,
            peak_rss_mb=peak_rss_mb(),
            checkpoint=self.latest_checkpoint() or self.save_checkpoint(),
            resumed_from_step=self.resumed_from_step,
        )
