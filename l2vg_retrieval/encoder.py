"""L2VGEncoder: embed what a frozen LLM would answer, via trainable special tokens.

Input layout (left padded):  [pad … pad | template + prompt + text | thought… | compression…]
The final hidden states at the compression positions go through the reconstruction head
(soft prompts, which the same frozen LM can decode) and the alignment head (teacher
space); their mean is the embedding.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .backbones import LoadedBackbone, LoadedTeacher, load_backbone, weights_fingerprint
from .batching import (
    common_prefix_length,
    encode_texts,
    format_output,
    own_positions,
    pad_left,
    positions_from_mask,
    run_batched,
)
from .config import EncoderConfig, EncoderLoraConfig
from .early_exit import ExitRMSNorm, build_exit_norm, check_exit_layer, truncated_body
from .encoder_lora import EncoderAdapter, grow_rank
from .inputs import PromptTemplate, as_text_list, build_input_ids, prompt_prefix_ids
from .kv_cache import CACHE_KWARG
from .matryoshka import check_dim, truncate
from .pooling import LatentAttentionPooling
from .rotation import RotatedTeacher, check_rotation
from .runtime import resolve_device, resolve_dtype

CHECKPOINT_FORMAT = "l2vg-checkpoint"
CHECKPOINT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "l2vg_config.json"
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "default"
# Distinct shared prefixes (template + instruction) whose KV states are kept per encoder.
_PREFIX_CACHE_SIZE = 8
# Up to this many texts, reading them as passages too costs less as extra rows of the query
# pass's batch (one walk through the weights; encode_with_answer_states' ``document_prompt``)
# than as a pass of its own over fewer layers. Measured per query, bf16, 2 cores: one text
# 87 against 99 ms; two 65 against 64; four 51 against 43; thirty 61 against 28 (the extra
# rows run every layer and the special tokens too). So: a single query only.
FUSED_READING_MAX_TEXTS = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or made for another backbone or shape."""


class L2VGEncoder(torch.nn.Module):
    """A frozen causal LM plus special tokens and two small heads."""

    # The variance-ordered rotation of the teacher space (see rotation.py), or None.
    teacher_rotation: torch.Tensor | None

    def __init__(
        self,
        config: EncoderConfig,
        backbone: LoadedBackbone,
        *,
        teacher_dim: int,
        teacher: LoadedTeacher | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = "auto",
    ) -> None:
        super().__init__()
        self.config = config
        self.device_ = resolve_device(device)
        self.dtype_ = resolve_dtype(dtype, self.device_)
        self.backbone = backbone
        # Registered outside the module tree: the backbone is frozen shared state, not a
        # parameter of this encoder, and must never reach an optimizer or a checkpoint.
        self._lm = [backbone.model.to(device=self.device_, dtype=self.dtype_)]
        # Frozen by construction, whoever loaded the model: only the special tokens, the
        # heads and (optionally) the encoder's own LoRA ever receive gradients.
        self.lm.requires_grad_(False)
        self.tokenizer = backbone.tokenizer
        self.template = PromptTemplate.for_tokenizer(
            self.tokenizer, use_chat_template=config.use_chat_template
        )
        hidden = int(self.lm.config.hidden_size)
        self.hidden_size = hidden
        self.teacher_dim = teacher_dim
        self._teacher_loaded = teacher
        self._teacher_encoder: Any = None

        generator = torch.Generator().manual_seed(config.seed)
        # Start the special tokens on real vocabulary rows: in-distribution inputs train
        # faster than random vectors of an arbitrary scale.
        vocab = self.lm.get_input_embeddings().weight.detach().float().cpu()
        rows = torch.randint(0, vocab.shape[0], (config.n_special,), generator=generator)
        self.special_tokens = torch.nn.Parameter(vocab[rows].clone())
        self.recon_head = torch.nn.Linear(hidden, hidden)
        self.align_head = torch.nn.Linear(hidden, teacher_dim)
        with torch.no_grad():
            # Scaled identity start: soft prompts begin as the final hidden states rescaled to
            # the norm of real token embeddings (the final norm's outputs are far larger),
            # so the frozen LM reads them as plausible inputs from step one.
            emb_norm = vocab.norm(dim=1).mean()
            final_norm = getattr(self.lm.get_decoder(), "norm", None)
            out_norm = final_norm.weight.detach().float().norm() if final_norm is not None else emb_norm
            self.recon_head.weight.copy_(torch.eye(hidden) * float(emb_norm / out_norm.clamp(min=1e-6)))
            self.recon_head.bias.zero_()
            bound = 1.0 / hidden**0.5
            self.align_head.weight.uniform_(-bound, bound, generator=generator)
            self.align_head.bias.zero_()
        # The options below are built only when configured, after the default parts have
        # drawn their random numbers: a default encoder has exactly the original tensors.
        if config.truncate_dim is not None:
            check_dim(config.truncate_dim, teacher_dim)
        self.latent_pool: LatentAttentionPooling | None = None
        if config.pooling == "latent_attention":
            self.latent_pool = LatentAttentionPooling(hidden, config.latent_attention, seed=config.seed)
        self.exit_norm: ExitRMSNorm | None = None
        if config.exit_layer is not None:
            check_exit_layer(self.lm, config.exit_layer)
            self.exit_norm = build_exit_norm(self.lm, config.exit_norm)
        # A buffer, not a parameter: saved with the weights and hashed into the fingerprint,
        # never trained. None (absent from the state dict, so default checkpoints are
        # unchanged) unless the config says there is one; the identity until the
        # checkpoint's R is loaded over it.
        self.register_buffer("teacher_rotation", torch.eye(teacher_dim) if config.teacher_rotation else None)
        self.to(self.device_)
        self._fingerprint: str | None = None
        self.adapter: EncoderAdapter | None = None
        if config.encoder_lora is not None:
            self.adapter = EncoderAdapter(self.lm, config.encoder_lora, seed=config.seed)
        # The body the encoding pass runs: the whole decoder, or a view of its first
        # exit_layer layers (kept outside the module tree: it holds the backbone's weights).
        self._body = [
            truncated_body(self.lm, config.exit_layer, keep_norm=self.exit_norm is None)
            if config.exit_layer is not None
            else self.lm.get_decoder()
        ]
        # Views of the first k layers for probe_states (also outside the module tree).
        self._probe_bodies: dict[int, torch.nn.Module] = {}
        self._prefix_kv: dict[tuple[Any, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls,
        config: EncoderConfig | None = None,
        *,
        backbone: LoadedBackbone | None = None,
        teacher: LoadedTeacher | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = "auto",
    ) -> L2VGEncoder:
        """An untrained encoder (special tokens and heads freshly initialised)."""
        config = config or EncoderConfig()
        backbone = backbone or load_backbone(config.backbone)
        teacher_dim = _teacher_dim(config.teacher, teacher)
        return cls(config, backbone, teacher_dim=teacher_dim, teacher=teacher, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        *,
        backbone: LoadedBackbone | None = None,
        teacher: LoadedTeacher | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = "auto",
        document_mode: str | None = None,
        truncate_dim: int | None = None,
    ) -> L2VGEncoder:
        """Load a checkpoint folder; with no path, the default trained encoder.

        The checkpoint's backbone name and weight fingerprint are checked against the
        loaded backbone, and every tensor's shape against the config: a mismatch raises
        ``CheckpointError`` naming what differs. ``document_mode`` and ``truncate_dim``
        (Matryoshka: keep the first m dimensions) override the checkpoint's settings.
        Checkpoints from before an option existed load with its default.
        """
        folder = Path(path) if path is not None else DEFAULT_CHECKPOINT
        meta = read_checkpoint_meta(folder)
        config = EncoderConfig.model_validate(meta["config"])
        overrides = {
            key: value
            for key, value in (("document_mode", document_mode), ("truncate_dim", truncate_dim))
            if value is not None
        }
        if overrides:
            # Re-validated, so a bad value is a clear pydantic error, not a silent setting.
            config = EncoderConfig.model_validate({**config.model_dump(), **overrides})
        backbone = backbone or load_backbone(config.backbone)
        encoder = cls(
            config,
            backbone,
            teacher_dim=int(meta["teacher_dim"]),
            teacher=teacher,
            device=device,
            dtype=dtype,
        )
        encoder.check_checkpoint_meta(meta, folder)
        encoder.load_trainable_state(_load_weights(folder))
        return encoder

    def check_checkpoint_meta(self, meta: dict[str, Any], folder: Path) -> None:
        """Refuse a checkpoint trained on other backbone weights or another hidden size."""
        if meta["backbone_fingerprint"] != self.backbone_fingerprint:
            raise CheckpointError(
                f"checkpoint {folder} was trained on backbone '{meta['config'].get('backbone')}' with "
                f"weight fingerprint {meta['backbone_fingerprint']}, but the loaded backbone "
                f"'{self.backbone.name}' has fingerprint {self.backbone_fingerprint}: the special "
                "tokens only mean something to the exact weights they were trained with"
            )
        if int(meta["hidden_size"]) != self.hidden_size:
            raise CheckpointError(
                f"checkpoint hidden size {meta['hidden_size']} != backbone hidden size {self.hidden_size}"
            )

    def warm_start_from_checkpoint(self, folder: Path) -> list[str]:
        """:meth:`warm_start_from` the tensors of a checkpoint folder, after the same checks
        ``from_pretrained`` makes; returns the names that started fresh."""
        meta = read_checkpoint_meta(folder)
        self.check_checkpoint_meta(meta, folder)
        saved_lora = EncoderConfig.model_validate(meta["config"]).encoder_lora
        return self.warm_start_from(_load_weights(folder), lora_from=saved_lora)

    def save_pretrained(self, path: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
        """Write only the trainable parts (safetensors) and a JSON config."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.trainable_state().items()}
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": CHECKPOINT_FORMAT})
        tmp.replace(folder / WEIGHTS_FILE)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "config": self.config.model_dump(),
            "backbone_fingerprint": self.backbone_fingerprint,
            "hidden_size": self.hidden_size,
            "teacher_dim": self.teacher_dim,
            "embedding_dim": self.dim,
            **(extra or {}),
        }
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("_")}
        if self.adapter is not None:
            state.update(self.adapter.state())
        return state

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Everything training may change: special tokens, heads, the encoder LoRA."""
        return [p for _, p in self.named_trainable_parameters()]

    def named_trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """``trainable_parameters`` with the names their checkpoint tensors carry (whether or
        not a run has frozen some of them: the backbone is not registered here)."""
        named = list(self.named_parameters())
        if self.adapter is not None:
            named += [(f"encoder_lora.{k}", p) for k, p in self.adapter.named_parameters()]
        return named

    def clear_caches(self) -> None:
        """Forget cached prefix states: needed whenever the encoding pass's weights change.
        (The LoRA's merged inference weights notice changes themselves; dropping them here
        also returns their memory.)"""
        self._prefix_kv.clear()
        if self.adapter is not None:
            self.adapter.clear_merged()

    def load_trainable_state(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = {k: tuple(v.shape) for k, v in self.trainable_state().items()}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if set(expected) != set(got):
            missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
            raise CheckpointError(
                f"checkpoint tensors do not match the encoder's config (pooling={self.config.pooling!r}, "
                f"exit_norm={self.config.exit_norm!r}, encoder_lora="
                f"{'on' if self.config.encoder_lora else 'off'}, teacher_rotation="
                f"{self.config.teacher_rotation}): missing {missing or 'none'}, "
                f"unexpected {unexpected or 'none'}; the config stored with the weights must "
                "describe the modules they were trained for"
            )
        for key, shape in expected.items():
            if got[key] != shape:
                raise CheckpointError(f"tensor '{key}' has shape {got[key]}, expected {shape}")
        if "teacher_rotation" in tensors:
            # A matrix that is not a rotation would silently change every cosine.
            try:
                check_rotation(tensors["teacher_rotation"], self.teacher_dim)
            except ValueError as exc:
                raise CheckpointError(f"tensor 'teacher_rotation': {exc}") from exc
        own = {k: v.float() for k, v in tensors.items() if not k.startswith("encoder_lora.")}
        self.load_state_dict(own, strict=True)
        if self.adapter is not None:
            self.adapter.load_state(tensors)
        self.clear_caches()

    def warm_start_from(
        self, tensors: dict[str, torch.Tensor], *, lora_from: EncoderLoraConfig | None = None
    ) -> list[str]:
        """Load a checkpoint trained with other *option* settings (issue 12's exit layer,
        pooling, exit norm) as the starting point of this encoder.

        Every tensor of the checkpoint must exist here with the same shape: tokens, heads and
        the encoder LoRA carry over. Tensors only this encoder has must belong to an option
        module (latent pooling, a learned exit norm); they keep their initialisation, which
        starts each option as the original encoder (zeroed output projections, a copy of the
        final norm). Returns the names that started fresh.

        ``lora_from`` is the checkpoint's encoder LoRA; when this encoder's has a larger rank
        (or another alpha) on the same modules, the checkpoint's adapter is embedded in it
        computing the same update (:func:`encoder_lora.grow_rank`).
        """
        own = self.trainable_state()
        mine = self.config.encoder_lora
        if lora_from is not None and mine is not None and lora_from != mine:
            tensors = grow_rank(tensors, own, saved=lora_from, target=mine)
        unexpected = sorted(set(tensors) - set(own))
        if unexpected:
            raise CheckpointError(
                f"warm start: this encoder has no place for checkpoint tensors {unexpected}"
            )
        for key, value in tensors.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise CheckpointError(
                    f"warm start: tensor '{key}' has shape {tuple(value.shape)}, "
                    f"expected {tuple(own[key].shape)}"
                )
        fresh = sorted(set(own) - set(tensors))
        not_options = [k for k in fresh if not k.startswith(_OPTION_MODULE_PREFIXES)]
        if not_options:
            raise CheckpointError(f"warm start: the checkpoint lacks core tensors {not_options}")
        self.load_trainable_state({**{k: own[k] for k in fresh}, **tensors})
        return fresh

    # ------------------------------------------------------------------ properties
    @property
    def lm(self) -> torch.nn.Module:
        return self._lm[0]

    @property
    def dim(self) -> int:
        """The size of the vectors ``encode`` returns (``truncate_dim`` if set)."""
        return self.config.truncate_dim or self.teacher_dim

    @property
    def full_dim(self) -> int:
        """The alignment head's full output size, before any Matryoshka truncation."""
        return self.teacher_dim

    def output_dim(self, dim: int | None = None) -> int:
        """The vector size for one call: ``dim`` if given, else the encoder's setting."""
        return check_dim(dim, self.teacher_dim) if dim is not None else self.dim

    @property
    def backbone_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.lm)
        return self._fingerprint

    @property
    def fingerprint(self) -> str:
        """Identifies this encoder's vector space: backbone weights + trained parameters."""
        import hashlib

        digest = hashlib.sha256(self.backbone_fingerprint.encode())
        for name, tensor in sorted(self.trainable_state().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        digest.update(self.config.model_dump_json(exclude=self.config.fingerprint_exclusions()).encode())
        return digest.hexdigest()[:32]

    @property
    def teacher(self) -> Any:
        """The teacher encoder, loaded on first use (training, teacher-mode documents).

        With a ``teacher_rotation`` its vectors come out rotated (a ``RotatedTeacher`` around
        the same loaded teacher), so everything read from it shares the head's space."""
        if self._teacher_encoder is None:
            from .teacher import TeacherEncoder

            source = self._teacher_loaded or self.config.teacher
            self._teacher_encoder = TeacherEncoder(source, device=str(self.device_))
            if self._teacher_encoder.dim != self.teacher_dim:
                raise CheckpointError(
                    f"teacher '{self.config.teacher}' has dim {self._teacher_encoder.dim}, "
                    f"but this encoder aligns to dim {self.teacher_dim}"
                )
        if self.teacher_rotation is None:
            return self._teacher_encoder
        # Built per access (it is two references): it always reads the current buffer,
        # whether loaded from a checkpoint or set by apply_rotation after first use.
        return RotatedTeacher(self._teacher_encoder, self.teacher_rotation)

    # ------------------------------------------------------------------ forward pieces
    def tokenize(self, texts: Sequence[str], prompt: str | None) -> list[list[int]]:
        return build_input_ids(
            self.tokenizer,
            self.template,
            texts,
            prompt=prompt,
            max_text_tokens=self.config.max_text_tokens,
        )

    def compression_states(self, batch: list[list[int]], prefix_hint: Sequence[int] = ()) -> torch.Tensor:
        """Final hidden states at the compression positions, ``[B, K, H]`` in fp32.

        Three passes over one growing KV cache:
        1. the prefix every row shares (chat template + instruction) runs once at batch
           size 1 and is kept in a small cache across calls: for short queries it is most
           of the tokens;
        2. the rest of each text, left padded after that prefix, without gradients;
        3. the special tokens, the only pass with autograd. No gradient needs to reach the
           text (the special tokens come after it), so this is exact and spares training
           the backward pass through the text. With an encoder LoRA the text's states
           depend on trained weights, so in training all three passes keep autograd.
        Without autograd (inference), 2 and 3 run as one pass: a short query's cost is
        mostly streaming the weights, once per pass.
        """
        with self._adapter_scope():
            return self._compression_states(batch, prefix_hint)

    def _adapter_scope(self) -> Any:
        return self.adapter.active() if self.adapter is not None else contextlib.nullcontext()

    def _compression_states(
        self,
        batch: list[list[int]],
        prefix_hint: Sequence[int],
        answer_states: list[torch.Tensor] | None = None,
        probe_layer: int | None = None,
        own_heads: Sequence[Sequence[int]] | None = None,
    ) -> torch.Tensor:
        """``answer_states``, if given, receives the final hidden state ``[B, H]`` of each row's
        last template token: where the LM would begin its answer (read by the safety gate).
        With an ``exit_layer`` every state here, that one included, is read at the exit layer.
        With ``probe_layer`` k it receives ``[B, 3H]``: that state, then, after the first k
        layers, the same position's state and the mean over the text's own positions
        (everything after the template + prompt head, as :meth:`probe_states` reads them;
        read by a forward hook on the text pass only). ``own_heads`` gives each row its own
        template + prompt head for that mean, when rows carry different prompts."""
        body = self.encoding_body
        n_special = self.config.n_special
        # Without autograd the text and the special tokens run as one pass: the same causal
        # attention, but the weights stream through once instead of twice, which is most
        # of a short query's cost on a CPU. Training keeps the passes apart so that only
        # the special tokens' pass carries autograd (see compression_states).
        fused = not torch.is_grad_enabled()
        # The last text position (the answer position) in what the text's pass returns.
        text_last = -1 - n_special if fused else -1
        # A LoRA in training changes the text's states too, so then the text passes need
        # gradients (and a fresh prefix each step); a frozen encoder never does.
        text_grad = self.adapter is not None and torch.is_grad_enabled()
        # What rows share with the known template + instruction head; a bare LCP would, for
        # a single text, cache that whole text as a "prefix" and evict the useful ones.
        head = list(prefix_hint or self.template.prefix_ids)
        # Built before the probe's hook exists: computing a new prefix runs the layers too.
        rest_ids, mask, cache, shared = self._after_cached_prefix(batch, head, fresh=text_grad)
        n_batch = rest_ids.shape[0]
        special = self.special_tokens.to(self.dtype_).unsqueeze(0).expand(n_batch, -1, -1)
        full_mask = torch.cat([mask, torch.ones_like(mask[:, :1]).expand(-1, n_special)], dim=1)
        probe: list[torch.Tensor] = []
        hook = None
        if answer_states is not None and probe_layer is not None:
            layer = self.decoder_layers()[self.check_probe_layer(probe_layer) - 1]
            width = rest_ids.shape[1]
            own = (
                own_positions(batch, head, width)
                if own_heads is None
                else torch.cat(
                    [own_positions([row], h, width) for row, h in zip(batch, own_heads, strict=True)]
                )
            ).to(self.device_)

            def keep_last_and_mean(_module: torch.nn.Module, _args: Any, output: Any) -> None:
                hidden = output[0] if isinstance(output, tuple) else output
                text = hidden[:, : own.shape[1]].float()  # fused: the special tokens follow
                mean = (text * own.unsqueeze(-1)).sum(1) / own.sum(1, keepdim=True).clamp_min(1.0)
                probe.append(torch.cat([hidden[:, text_last].float(), mean], dim=1))

            hook = layer.register_forward_hook(keep_last_and_mean)
        try:
            if fused:
                embeds = torch.cat([self.lm.get_input_embeddings()(rest_ids), special], dim=1)
                text_out = out = body(
                    inputs_embeds=embeds,
                    attention_mask=full_mask,
                    position_ids=positions_from_mask(full_mask)[:, shared:],
                    **{CACHE_KWARG: cache},
                    use_cache=True,
                )
            else:
                with torch.set_grad_enabled(text_grad):
                    text_out = body(
                        input_ids=rest_ids,
                        attention_mask=mask,
                        position_ids=positions_from_mask(mask)[:, shared:],
                        **{CACHE_KWARG: cache},
                        use_cache=True,
                    )
        finally:
            if hook is not None:
                hook.remove()
        if not fused:
            lengths = mask.sum(-1, keepdim=True)
            positions = lengths + torch.arange(n_special, device=self.device_).unsqueeze(0)
            out = body(
                inputs_embeds=special,
                attention_mask=full_mask,
                position_ids=positions,
                **{CACHE_KWARG: cache},
                use_cache=True,
            )
        if answer_states is not None:
            # Left padding: every row's last text position is its answer position.
            final = self._exit_states(text_out.last_hidden_state[:, text_last])
            answer_states.append(torch.cat([final.float(), probe[-1]], dim=1) if probe else final)
        return self._exit_states(out.last_hidden_state[:, -self.config.n_compression :])

    def _after_cached_prefix(
        self, batch: list[list[int]], head: Sequence[int], *, fresh: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, Any, int]:
        """What a pass over ``batch`` runs after the head its rows share with ``head``:
        ``(rest_ids, mask, cache, shared)``, the rows' own tokens left-padded, the attention
        mask over head + rest, a KV cache holding the head (:meth:`_expanded_prefix_cache`),
        and the head's length."""
        shared = common_prefix_length(batch, head)
        rest_ids, rest_mask = pad_left([ids[shared:] for ids in batch], self.tokenizer.pad_token_id)
        rest_ids, rest_mask = rest_ids.to(self.device_), rest_mask.to(self.device_)
        cache = self._expanded_prefix_cache(tuple(batch[0][:shared]), rest_ids.shape[0], fresh=fresh)
        prefix_mask = torch.ones((rest_ids.shape[0], shared), dtype=torch.long, device=self.device_)
        return rest_ids, torch.cat([prefix_mask, rest_mask], dim=1), cache, shared

    def decoder_layers(self) -> Sequence[torch.nn.Module]:
        """The decoder layers the encoding pass runs, in order."""
        return self.encoding_body.layers  # type: ignore[return-value]

    def check_probe_layer(self, probe_layer: int) -> int:
        """``probe_layer`` (a count of decoder layers) after checking the encoding pass has them."""
        n_layers = len(self.decoder_layers())
        if (
            isinstance(probe_layer, bool)
            or not isinstance(probe_layer, int)
            or not 1 <= probe_layer <= n_layers
        ):
            raise ValueError(
                f"probe_layer must be an integer in 1..{n_layers} (the encoding pass's layers), "
                f"got {probe_layer!r}"
            )
        return probe_layer

    @property
    def encoding_body(self) -> torch.nn.Module:
        """The decoder body the encoding pass runs (the first ``exit_layer`` layers, or all)."""
        return self._body[0]

    def _exit_states(self, states: torch.Tensor) -> torch.Tensor:
        """fp32 states as the embedding reads them: the learned exit norm applied, if any
        (otherwise the body's own final norm already was)."""
        return states.float() if self.exit_norm is None else self.exit_norm(states)

    def _expanded_prefix_cache(self, prefix: tuple[int, ...], n_batch: int, *, fresh: bool = False) -> Any:
        """A fresh KV cache holding ``prefix`` for every row (computed once per prefix).

        ``fresh`` computes the prefix now, with autograd, and caches nothing: a LoRA in
        training changes the prefix's states at every step.
        """
        from transformers import DynamicCache

        body = self.encoding_body
        # The body's own config: with an exit_layer the cache holds only its layers.
        cache = DynamicCache(config=body.config)
        if not prefix:
            return cache
        if fresh:
            body(
                input_ids=torch.tensor([prefix], device=self.device_), **{CACHE_KWARG: cache}, use_cache=True
            )
            for layer in cache.layers:
                layer.keys = layer.keys.expand(n_batch, -1, -1, -1)
                layer.values = layer.values.expand(n_batch, -1, -1, -1)
            return cache
        # Inference-mode tensors cannot enter autograd, so training gets its own entries.
        key = (prefix, self.dtype_, str(self.device_), torch.is_inference_mode_enabled())
        layers = self._prefix_kv.get(key)
        if layers is None:
            filled = DynamicCache(config=body.config)
            with torch.no_grad():
                body(
                    input_ids=torch.tensor([prefix], device=self.device_),
                    **{CACHE_KWARG: filled},
                    use_cache=True,
                )
            layers = [(layer.keys, layer.values) for layer in filled.layers]
            if len(self._prefix_kv) >= _PREFIX_CACHE_SIZE:
                self._prefix_kv.pop(next(iter(self._prefix_kv)))
            self._prefix_kv[key] = layers
        for index, (keys, values) in enumerate(layers):
            cache.update(keys.expand(n_batch, -1, -1, -1), values.expand(n_batch, -1, -1, -1), index)
        return cache

    def soft_prompts_from_ids(self, batch: list[list[int]], prefix_hint: Sequence[int] = ()) -> torch.Tensor:
        return self.recon_head(self.compression_states(batch, prefix_hint))

    def prefix_hint(self, prompt: str | None) -> list[int]:
        return prompt_prefix_ids(self.tokenizer, self.template, prompt)

    def _text_head(self, prompt: str | None) -> list[int]:
        """The template + prompt head a text's own positions follow (the bare template
        head when there is no prompt)."""
        return self.prefix_hint(prompt) or list(self.template.prefix_ids)

    def embed_soft_prompts(self, soft: torch.Tensor) -> torch.Tensor:
        """The (unnormalised, full-size) embedding: the aligned, pooled soft prompts."""
        if self.latent_pool is None:
            # Kept as the original expression (head, then mean) so default vectors are
            # bit-identical to those of earlier versions.
            return self.align_head(soft).mean(dim=1)
        return self.align_head(self.latent_pool(soft))

    def pooled_soft_prompts(self, soft: torch.Tensor) -> torch.Tensor:
        """``[B, H]``: what the alignment head maps to the embedding (it is linear, so the
        embedding is ``align_head(pooled_soft_prompts(soft))``; the refit relies on it)."""
        return soft.mean(dim=1) if self.latent_pool is None else self.latent_pool(soft)

    # ------------------------------------------------------------------ public API
    def encode(
        self,
        texts: Any,
        *,
        prompt: str | None = None,
        batch_size: int = 32,
        normalize_embeddings: bool = True,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        dim: int | None = None,
    ) -> Any:
        """Embed texts with an optional instruction ``prompt`` placed before each text.

        ``dim`` keeps the first ``dim`` dimensions (Matryoshka; default: the encoder's
        ``truncate_dim``, else all), before normalisation.
        """
        hint = self.prefix_hint(prompt)
        width = self.output_dim(dim)
        return encode_texts(
            texts,
            dim=width,
            prepare=lambda items: self.tokenize(items, prompt),
            embed=lambda batch: truncate(
                self.embed_soft_prompts(self.soft_prompts_from_ids(batch, hint)), width
            ),
            lock=self._lock,
            desc="l2vg encode",
            batch_size=batch_size,
            normalize_embeddings=normalize_embeddings,
            show_progress_bar=show_progress_bar,
            convert_to_numpy=convert_to_numpy,
            convert_to_tensor=convert_to_tensor,
        )

    def encode_with_answer_states(
        self,
        texts: Any,
        *,
        prompt: str | None = None,
        batch_size: int = 32,
        normalize_embeddings: bool = True,
        show_progress_bar: bool | None = None,
        dim: int | None = None,
        probe_layer: int | None = None,
        document_prompt: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings plus, from the same forward pass, the final hidden state at the answer
        position (the last template token, where the LM would start its reply): ``([N, D],
        [N, H])``, or ``([D], [H])`` for one string. ``lm.get_output_embeddings()`` of that
        state is the backbone's next-token distribution, e.g. how likely it is to refuse.
        With ``probe_layer`` k the states are ``[N, 3H]``: the final one, then after k layers
        the answer position's state and the mean over the text's own positions (a middle
        layer says more about what is asked: the safety gate's probe reads it). Plain
        :meth:`encode` never computes them.

        With ``document_prompt`` too (``[N, 5H]``), each text is also read as a passage, as
        :meth:`probe_states` reads it under that prompt (the last position and the mean after
        k layers, ``[N, 2H]`` appended), in the *same* forward pass: the passage reading is a
        second row of the batch. Its states after k layers come before the special tokens,
        so causal attention leaves them as a pass of their own would; what is shared is the
        walk through the weights, which costs a short text most of its time on a CPU. (Its
        row runs through every layer and the special tokens too, so for large batches two
        passes cost less: :data:`FUSED_READING_MAX_TEXTS`.)"""
        items, single = as_text_list(texts)
        width = self.output_dim(dim)
        n_states = self.hidden_size * (1 if probe_layer is None else 3 if document_prompt is None else 5)
        if probe_layer is not None:
            self.check_probe_layer(probe_layer)
        elif document_prompt is not None:
            raise ValueError("reading the texts as passages too needs a probe_layer")
        if not items:
            return np.zeros((0, width), np.float32), np.zeros((0, n_states), np.float32)
        ids = self.tokenize(items, prompt)
        hint = self.prefix_hint(prompt)
        as_passage: dict[tuple[int, ...], list[int]] = {}
        if document_prompt is not None:
            passage_ids = self.tokenize(items, document_prompt)
            as_passage = {tuple(q): d for q, d in zip(ids, passage_ids, strict=True)}
            query_head, passage_head = self._text_head(prompt), self._text_head(document_prompt)

        def embed(batch: list[list[int]]) -> torch.Tensor:
            states: list[torch.Tensor] = []
            rows, heads = batch, None
            if as_passage:
                rows = batch + [as_passage[tuple(q)] for q in batch]
                heads = [query_head] * len(batch) + [passage_head] * len(batch)
            with self._adapter_scope():
                compressed = self._compression_states(
                    rows, hint, answer_states=states, probe_layer=probe_layer, own_heads=heads
                )
            n = len(batch)
            emb = truncate(self.embed_soft_prompts(self.recon_head(compressed[:n])).float(), width)
            read = states[0][:n]
            if as_passage:  # the passage rows' [last, mean] after probe_layer layers
                read = torch.cat([read, states[0][n:, self.hidden_size :]], dim=1)
            return torch.cat([emb, read], dim=1)

        with self._lock, torch.inference_mode():
            out = run_batched(
                ids, [len(i) for i in ids], embed, batch_size=batch_size,
                show_progress_bar=show_progress_bar, desc="l2vg encode",
            )  # fmt: skip
        emb, answer = out[:, :width], out[:, width:]
        if normalize_embeddings:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        emb_np, answer_np = emb.numpy().astype(np.float32), answer.numpy().astype(np.float32)
        return (emb_np[0], answer_np[0]) if single else (emb_np, answer_np)

    def probe_states(
        self,
        texts: Any,
        *,
        probe_layer: int | Sequence[int],
        prompt: str | None = None,
        batch_size: int = 16,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """What the encoding pass holds about each text after its first ``probe_layer``
        layers: ``[N, 2H]`` (``[2H]`` for one string), the state at the last position, then
        the mean over the text's own positions (everything after the template + ``prompt``
        head). Only those layers run, and no special tokens: a middle-layer probe costs
        about half a text pass. The safety screen reads passages this way.

        Several layers (a list or tuple) are read from one pass through the deepest of them:
        ``[N, 2H * k]``, one ``[last, mean]`` block per layer in the order given."""
        layers = list(probe_layer) if isinstance(probe_layer, list | tuple) else [probe_layer]
        if not layers:
            raise ValueError("probe_layer must name at least one layer")
        for layer in layers:
            self.check_probe_layer(layer)  # type: ignore[arg-type]
        items, single = as_text_list(texts)
        width = 2 * self.hidden_size * len(layers)
        if not items:
            return np.zeros((0, width), np.float32)
        ids = self.tokenize(items, prompt)
        hint = self._text_head(prompt)
        deepest = max(layers)
        body = self._probe_bodies.get(deepest)
        if body is None:
            body = self._probe_bodies[deepest] = truncated_body(self.lm, deepest, keep_norm=False)
        captured: dict[int, torch.Tensor] = {}

        def keep(layer: int) -> Any:
            def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
                captured[layer] = output[0] if isinstance(output, tuple) else output

            return hook

        def states(batch: list[list[int]]) -> torch.Tensor:
            # The template + prompt head every row shares runs once per process, from the
            # encoding pass's prefix cache (its first layers are this body's): for a short
            # text, a query read as a passage, the head is most of the tokens.
            rest_ids, mask, cache, shared = self._after_cached_prefix(batch, hint)
            body(
                input_ids=rest_ids,
                attention_mask=mask,
                position_ids=positions_from_mask(mask)[:, shared:],
                **{CACHE_KWARG: cache},
                use_cache=True,
            )
            own = own_positions(batch, hint, rest_ids.shape[1]).to(self.device_)
            blocks = []
            for layer in layers:
                hidden = captured[layer].float()
                mean = (hidden * own.unsqueeze(-1)).sum(1) / own.sum(1, keepdim=True)
                blocks += [hidden[:, -1], mean]
            return torch.cat(blocks, dim=1)

        decoder_layers = self.decoder_layers()
        with self._lock, torch.inference_mode(), self._adapter_scope():
            hooks = [decoder_layers[layer - 1].register_forward_hook(keep(layer)) for layer in set(layers)]
            try:
                out = run_batched(
                    ids, [len(i) for i in ids], states, batch_size=batch_size,
                    show_progress_bar=show_progress_bar, desc="l2vg probe",
                )  # fmt: skip
            finally:
                for hook in hooks:
                    hook.remove()
        result = out.numpy().astype(np.float32)
        return result[0] if single else result

    def encode_query(self, texts: Any, *, instruction: str | None = None, **kwargs: Any) -> Any:
        """Embed queries with a task instruction (the config's default if not given)."""
        return self.encode(texts, prompt=instruction or self.config.query_instruction, **kwargs)

    def encode_document(self, texts: Any, **kwargs: Any) -> Any:
        """Embed documents the configured way: generatively, or by the teacher directly."""
        if self.config.document_mode == "teacher":
            kwargs.pop("prompt", None)
            width = self.output_dim(kwargs.pop("dim", None))
            if width == self.teacher_dim:
                return self.teacher.encode(texts, **kwargs)
            return self._truncated_teacher_encode(texts, width, **kwargs)
        return self.encode(texts, prompt=kwargs.pop("prompt", self.config.document_prompt), **kwargs)

    def _truncated_teacher_encode(
        self,
        texts: Any,
        width: int,
        *,
        normalize_embeddings: bool = True,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Teacher-mode documents at a Matryoshka size: cut the raw vectors, then normalise,
        exactly as generative vectors are (the teacher itself knows nothing of truncation)."""
        _, single = as_text_list(texts)
        raw = self.teacher.encode(texts, normalize_embeddings=False, convert_to_tensor=True, **kwargs)
        return format_output(
            truncate(raw.reshape(-1, self.teacher_dim), width),
            single=single,
            normalize_embeddings=normalize_embeddings,
            convert_to_numpy=convert_to_numpy,
            convert_to_tensor=convert_to_tensor,
        )

    def soft_prompts(
        self,
        texts: Any,
        *,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = False,
    ) -> torch.Tensor:
        """The ``[N, K, H]`` soft prompts for texts: what ``decode`` turns back into text."""
        items, single = as_text_list(texts)
        if not items:
            return torch.zeros((0, self.config.n_compression, self.hidden_size))
        ids = self.tokenize(items, prompt)
        hint = self.prefix_hint(prompt)
        with self._lock, torch.inference_mode():
            flat = run_batched(
                ids,
                [len(i) for i in ids],
                lambda b: self.soft_prompts_from_ids(b, hint).flatten(1),
                batch_size=batch_size,
                show_progress_bar=show_progress_bar,
                desc="soft prompts",
            )
        soft = flat.view(len(items), self.config.n_compression, self.hidden_size)
        return soft[0] if single else soft

    def decode(
        self,
        texts_or_soft_prompts: Any,
        *,
        prompt: str | None = None,
        max_new_tokens: int = 64,
        batch_size: int = 16,
        repetition_penalty: float = 1.0,
    ) -> Any:
        """Greedy generation from soft prompts alone: shows what an embedding "means".

        Takes texts (encoded first, with ``prompt``) or soft prompts ``[K, H]``/``[N, K, H]``
        from :meth:`soft_prompts`. Rows stop at EOS independently. The final embedding
        vector cannot be decoded: the alignment head's mean discards what decoding needs.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if isinstance(texts_or_soft_prompts, np.ndarray):
            texts_or_soft_prompts = torch.from_numpy(texts_or_soft_prompts)
        if isinstance(texts_or_soft_prompts, torch.Tensor):
            soft, single = self._check_soft_prompts(texts_or_soft_prompts)
        else:
            _, single = as_text_list(texts_or_soft_prompts)
            soft = self.soft_prompts(texts_or_soft_prompts, prompt=prompt)
            soft = soft.unsqueeze(0) if single else soft
        from .generation import generate_from_embeds

        with self._lock:
            outputs = generate_from_embeds(
                self.lm,
                self.tokenizer,
                soft.to(self.device_, self.dtype_),
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                repetition_penalty=repetition_penalty,
            )
        return outputs[0] if single else outputs

    def _check_soft_prompts(self, soft: torch.Tensor) -> tuple[torch.Tensor, bool]:
        k, h = self.config.n_compression, self.hidden_size
        if soft.dim() == 2 and tuple(soft.shape) == (k, h):
            return soft.unsqueeze(0), True
        if soft.dim() == 3 and tuple(soft.shape[1:]) == (k, h):
            return soft, False
        raise ValueError(
            f"decode expects soft prompts of shape [{k}, {h}] or [N, {k}, {h}] (from "
            f"encoder.soft_prompts(...)), got {tuple(soft.shape)}; a final embedding of "
            f"dim {self.dim} cannot be decoded"
        )

    def __repr__(self) -> str:
        c = self.config
        options = "".join(
            f", {name}={getattr(c, name)!r}"
            for name in ("exit_layer", "pooling", "teacher_rotation")
            if name not in c.fingerprint_exclusions()
        )
        return (
            f"L2VGEncoder(backbone={c.backbone!r}, thought={c.n_thought}, "
            f"compression={c.n_compression}, dim={self.dim}, dtype={self.dtype_}, "
            f"document_mode={c.document_mode!r}{options})"
        )


# Modules that exist only when an option is on; a warm start may leave them at their
# initialisation (each starts as the original encoder's behaviour).
_OPTION_MODULE_PREFIXES = ("latent_pool.", "exit_norm.")


def _teacher_dim(name: str, teacher: LoadedTeacher | None) -> int:
    if teacher is not None:
        return int(teacher.model.config.hidden_size)
    from transformers import AutoConfig

    from .backbones import resolve_teacher_path

    return int(AutoConfig.from_pretrained(resolve_teacher_path(name)).hidden_size)


def read_meta_file(
    folder: Path, file_name: str, *, kind: str, fmt: str, version: int, required: Sequence[str]
) -> dict[str, Any]:
    """A checkpoint folder's JSON description, checked: the folder and the file exist, the
    file parses, names format ``fmt`` at ``version``, and holds every ``required`` key.
    ``kind`` names the checkpoint in messages ("l2vg", "l2vg LLM2Vec")."""
    path = folder / file_name
    if not folder.is_dir():
        if folder.resolve() == DEFAULT_CHECKPOINT.resolve():
            raise CheckpointError(
                f"the packaged default checkpoint is missing ({folder}): it ships inside the package; "
                "reinstall it (`make install`, or `pip install -e .` in a clone whose "
                "l2vg_retrieval/checkpoints/default/ is intact) or pass a checkpoint folder"
            )
        raise CheckpointError(f"no checkpoint folder at {folder}")
    if not path.is_file():
        raise CheckpointError(f"{folder} is not an {kind} checkpoint: {file_name} is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(f"{path} is not an {kind} checkpoint config")
    if meta.get("format_version") != version:
        raise CheckpointError(
            f"{path} has format version {meta.get('format_version')}, this library reads version {version}"
        )
    missing = [key for key in required if key not in meta]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(repr(k) for k in missing)}")
    return meta


def read_checkpoint_meta(folder: Path) -> dict[str, Any]:
    return read_meta_file(
        folder,
        CONFIG_FILE,
        kind="l2vg",
        fmt=CHECKPOINT_FORMAT,
        version=CHECKPOINT_VERSION,
        required=("config", "backbone_fingerprint", "hidden_size", "teacher_dim"),
    )


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file: {exc}") from exc
