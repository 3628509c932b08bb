"""Early exit (L3Prune): encode with the first L decoder layers of the shared backbone.

The backbone is shared (reconstruction, decoding and other encoders run all of it), so
it is never edited. Instead the encoder runs a *view* of its decoder body: a shallow copy
whose layer list holds the first L layer objects and whose config says L layers. The
layers, embeddings, rotary tables and any peft LoRA injected into them are the very same
objects, so weights are shared and an encoder LoRA applies unchanged; the upper layers
are simply never called, which is where the speed comes from.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .config import ExitNorm


class ExitRMSNorm(torch.nn.Module):
    """A trainable RMSNorm for the exit states (``exit_norm='learned'``).

    The model's final norm was fitted to the last layer's statistics; a layer in the middle
    may want other per-channel scales. It starts as a copy of the final norm's weight, so an
    untrained encoder reads the same states as with ``'final_norm'``; it costs H parameters.
    """

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight.detach().float().clone())
        self.eps = eps

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        # fp32 statistics, as Llama's own RMSNorm computes them.
        states = states.float()
        scale = torch.rsqrt(states.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (states * scale)


def check_exit_layer(lm: torch.nn.Module, exit_layer: int) -> int:
    """The backbone's layer count, after checking that ``exit_layer`` fits in it."""
    n_layers = int(lm.config.num_hidden_layers)
    if not 1 <= exit_layer <= n_layers:
        raise ValueError(f"exit_layer {exit_layer} is outside the backbone's 1..{n_layers} decoder layers")
    return n_layers


def truncated_body(lm: torch.nn.Module, exit_layer: int, *, keep_norm: bool) -> torch.nn.Module:
    """A view of ``lm``'s decoder body that runs its first ``exit_layer`` layers only.

    ``keep_norm`` keeps the model's final norm at the end of the view; otherwise the view
    returns the raw residual stream (a learned norm is applied by the caller). Only
    decoders laid out as ``.layers`` + ``.norm`` (Llama, Qwen, Mistral, Gemma, ...) are
    supported; anything else is a clear error, not a silent full-depth pass.
    """
    check_exit_layer(lm, exit_layer)
    body = lm.get_decoder()
    if not isinstance(getattr(body, "layers", None), torch.nn.ModuleList) or not hasattr(body, "norm"):
        raise ValueError(
            f"exit_layer needs a decoder with '.layers' and '.norm' (Llama-style); "
            f"{type(body).__name__} has another layout"
        )
    view = copy.copy(body)
    # copy.copy shares the submodule dict with the original: give the view its own, or the
    # next line would cut the layers out of the shared backbone itself.
    view._modules = dict(body._modules)
    view._modules["layers"] = torch.nn.ModuleList(list(body.layers)[:exit_layer])
    if not keep_norm:
        view._modules["norm"] = torch.nn.Identity()
    view.config = _truncated_config(body.config, exit_layer)
    return view


def _truncated_config(config: Any, exit_layer: int) -> Any:
    """A copy of ``config`` for ``exit_layer`` layers: the body's loop and the KV cache
    both size themselves from ``num_hidden_layers`` (and per-layer ``layer_types``)."""
    config = copy.deepcopy(config)
    config.num_hidden_layers = exit_layer
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:exit_layer]
    return config


def build_exit_norm(lm: torch.nn.Module, kind: ExitNorm) -> ExitRMSNorm | None:
    """The learned exit norm, or None when the model's own final norm is used."""
    if kind == "final_norm":
        return None
    final = getattr(lm.get_decoder(), "norm", None)
    hidden = int(lm.config.hidden_size)
    weight = getattr(final, "weight", None)
    start = weight if isinstance(weight, torch.Tensor) and weight.shape == (hidden,) else torch.ones(hidden)
    eps = float(getattr(lm.config, "rms_norm_eps", None) or 1e-6)
    return ExitRMSNorm(start, eps)
