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
        self._set(False)

    def _set(self, enabled: bool) -> None:
        for layer in _lora_layers(self.model):
            if self.name not in layer.lora_A:
                continue
            if enabled:
                layer.set_adapter(self.name)
            # peft's switch: with adapters disabled the layer is its base layer exactly.
            layer.enable_adapters(enabled)
        for param in self._params.values():
            param.requires_grad_(True)

    @contextmanager
    def active(self) -> Iterator[None]:
        """The adapter applies inside this block only (callers hold the encoder's lock)."""
        self._set(True)
        try:
            yield
        finally:
            self._set(False)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self._params.values())

    def state(self) -> dict[str, torch.Tensor]:
        return {f"encoder_lora.{k}": v for k, v in self._params.items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, param in self._params.items():
                param.copy_(tensors[f"encoder_lora.{key}"].to(param.dtype))
