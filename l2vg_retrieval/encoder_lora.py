"""A peft LoRA on the shared backbone that is active only during the encoding pass.

One frozen backbone serves encoding, reconstruction and decoding. The adapter is injected
into it (peft's ``inject_adapter_in_model``) under a name unique to its encoder and kept
*disabled* by default: only :meth:`EncoderAdapter.active` switches it on, around the
encoder's own forward passes. Reconstruction, decoding and any other user of the same
backbone (a baseline in the benchmark lineup, a second encoder) see the unadapted model,
and the base weights are never written to.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .config import EncoderLoraConfig

_NAMES = itertools.count()


def _lora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


class EncoderAdapter:
    """The LoRA of one encoder: inject, switch on for a pass, save and load its tensors."""

    def __init__(self, model: torch.nn.Module, settings: EncoderLoraConfig, *, seed: int = 0) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        self.name = f"l2vg_encoder_{next(_NAMES)}"
        self.settings = settings
        config = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=list(settings.target_modules),
            bias="none",
        )
        # peft initialises lora_A randomly: seed it so an untrained encoder is reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inject_adapter_in_model(config, model, adapter_name=self.name)
        self.model = model
        marker = f".{self.name}"
        # Parameter names without the adapter's instance name: a checkpoint's keys must
        # not depend on how many encoders this process created before it.
        self._params: dict[str, torch.nn.Parameter] = {
            name.replace(marker, ""): param for name, param in model.named_parameters() if marker in name
        }
        if not self._params:
            raise ValueError(
                f"no module of the backbone matched the LoRA target_modules {settings.target_modules}"
            )
        self._frozen: set[str] = set()
        self._set(False)
        self._merged_cache: tuple[tuple[object, ...], list[torch.nn.Parameter]] | None = None

    def _set(self, enabled: bool) -> None:
        for layer in _lora_layers(self.model):
            if self.name not in layer.lora_A:
                continue
            if enabled:
                layer.set_adapter(self.name)
            # peft's switch: with adapters disabled the layer is its base layer exactly.
            layer.enable_adapters(enabled)
        # peft's switch also clears requires_grad; put back ours (a frozen tensor stays so).
        for key, param in self._params.items():
            param.requires_grad_(key not in self._frozen)

    def freeze(self, keys: set[str]) -> None:
        """Keep these LoRA tensors (names as in ``state()``, without the prefix) out of
        training: a run that trains other parts records no graph for them."""
        self._frozen = set(keys) & set(self._params)
        for key, param in self._params.items():
            param.requires_grad_(key not in self._frozen)

    @contextmanager
    def active(self) -> Iterator[None]:
        """The adapter applies inside this block only (callers hold the encoder's lock).

        Without autograd (inference) the block runs on merged weights, ``W + B·A·scale``
        cached per layer, swapped in for the block and back after: the same function as
        peft's side path, without its two extra small matmuls per projection, which cost a
        single query ~40% more than the bare forward. With autograd (training) peft's
        path runs, so gradients reach the LoRA tensors."""
        if not torch.is_grad_enabled():
            with self._merged():
                yield
            return
        self._set(True)
        try:
            yield
        finally:
            self._set(False)

    @contextmanager
    def _merged(self) -> Iterator[None]:
        layers = [layer for layer in _lora_layers(self.model) if self.name in layer.lora_A]
        merged = self._merged_weights(layers)
        originals = [layer.base_layer.weight for layer in layers]
        try:
            for layer, weight in zip(layers, merged, strict=True):
                layer.base_layer.weight = weight
            yield
        finally:
            for layer, weight in zip(layers, originals, strict=True):
                layer.base_layer.weight = weight

    def clear_merged(self) -> None:
        """Drop the merged inference weights (rebuilt on the next inference pass)."""
        self._merged_cache = None

    def _merged_weights(self, layers: list[torch.nn.Module]) -> list[torch.nn.Parameter]:
        # Recomputed whenever a LoRA tensor or a base weight changed in place (training
        # steps, load_state) or moved: tensors' version counters and storage say so.
        key = tuple(
            (p.data_ptr(), p._version, p.dtype, str(p.device))
            for layer in layers
            for p in (layer.base_layer.weight, *layer.lora_A[self.name].parameters(),
                      *layer.lora_B[self.name].parameters())
        )  # fmt: skip
        if self._merged_cache is not None and self._merged_cache[0] == key:
            return self._merged_cache[1]
        self._merged_cache = None  # drop the stale copy before building the new one
        with torch.no_grad():
            merged = []
            for layer in layers:
                base = layer.base_layer.weight
                delta = layer.get_delta_weight(self.name).to(torch.float32)
                weight = (base.to(torch.float32) + delta).to(base.dtype)
                merged.append(torch.nn.Parameter(weight, requires_grad=False))
        self._merged_cache = (key, merged)
        return merged

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self._params.values())

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """``(name, tensor)`` with the names ``state()`` uses, without its prefix."""
        return list(self._params.items())

    def state(self) -> dict[str, torch.Tensor]:
        return {f"encoder_lora.{k}": v for k, v in self._params.items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, param in self._params.items():
                param.copy_(tensors[f"encoder_lora.{key}"].to(param.dtype))


def grow_rank(
    tensors: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    *,
    saved: EncoderLoraConfig,
    target: EncoderLoraConfig,
) -> dict[str, torch.Tensor]:
    """A checkpoint's LoRA tensors (rank ``saved.r``) embedded in a LoRA of rank
    ``target.r`` that computes exactly the same update, so a larger adapter can be trained
    from a trained smaller one instead of from scratch.

    The update is ``B·A·alpha/r``. The saved rows of ``A`` and columns of ``B`` take the first
    ``saved.r`` places; the new rows of ``A`` keep their fresh random initialisation (taken
    from ``own``, this encoder's tensors) and the new columns of ``B`` are zero, so the added
    directions contribute nothing until training moves them, and their gradients are not
    zero (peft's own initialisation, at the larger rank). ``B`` is rescaled by the ratio of
    the two scalings, so any ``alpha`` works. Keys are ``encoder_lora.<module>.lora_A.weight``
    / ``lora_B.weight`` as :meth:`EncoderAdapter.state` names them; other keys pass through.
    """
    if target.r < saved.r:
        raise ValueError(f"a LoRA can only grow: rank {saved.r} -> {target.r}")
    if tuple(target.target_modules) != tuple(saved.target_modules):
        raise ValueError(
            f"a grown LoRA must cover the same modules: {saved.target_modules} -> {target.target_modules}"
        )
    rescale = (saved.alpha / saved.r) / (target.alpha / target.r)
    grown = dict(tensors)
    for key, value in tensors.items():
        if not key.startswith("encoder_lora."):
            continue
        if key not in own:
            raise ValueError(f"this encoder's LoRA has no tensor '{key}'")
        fresh = own[key].detach().to(torch.float32).clone()
        old = value.detach().to(torch.float32)
        if key.endswith("lora_A.weight"):
            fresh[: saved.r] = old
        elif key.endswith("lora_B.weight"):
            fresh.zero_()
            fresh[:, : saved.r] = old * rescale
        else:
            raise ValueError(f"unexpected LoRA tensor '{key}'")
        grown[key] = fresh
    return grown
