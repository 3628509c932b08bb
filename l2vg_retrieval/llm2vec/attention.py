"""Bidirectional attention for a decoder-only LM on transformers 5.x, without subclassing it.

A Llama-family model is causal in three places, and each needs switching off:

1. the mask builder: ``create_causal_mask`` returns a lower-triangular mask, or ``None``
   when there is no padding so that SDPA can take its ``is_causal`` fast path;
2. the SDPA call: ``is_causal = q_len > 1 and attention_mask is None and is_causal``, where
   ``is_causal`` is the ``is_causal`` keyword argument if one reaches it, else the
   attention module's own ``is_causal`` attribute;
3. flash-attention kernels, which read the same attribute.

Transformers 5 has first-class support for the first two: a model forward called with
``is_causal=False`` sets ``config.is_causal`` for the duration of the call (so
``create_causal_mask`` hands over to ``create_bidirectional_mask``) and forwards the keyword
to the attention function. :func:`forward_hidden` uses that, *and* passes an explicit 4D
bidirectional padding mask built by transformers' own ``create_bidirectional_mask`` (so
nothing depends on a mask being skipped), *and* runs inside :func:`bidirectional_attention`,
which clears ``is_causal`` on every attention module for the call (for code paths that
read the attribute, e.g. flash attention or a model class without the keyword). The
reference implementation (McGill-NLP/llm2vec) subclassed each attention class and
overrode the mask builder; that code does not import on transformers 5.

Everything here is switched on per call and restored afterwards, so a backbone shared with
a causal user (the L2VG encoder, the input-centric baseline) stays causal for them.
Callers serialise use of one model (each encoder holds its own lock).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..batching import positions_from_mask

_MISSING = object()


def decoder_body(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body (``LlamaModel``) of a causal LM, or the model itself if it is one."""
    getter = getattr(model, "get_decoder", None)
    body = getter() if callable(getter) else model
    return body if body is not None else model


@contextmanager
def bidirectional_attention(model: torch.nn.Module, enabled: bool = True) -> Iterator[torch.nn.Module]:
    """Within the block every attention module of ``model`` is non-causal, and so are its configs.

    With ``enabled=False`` it is a no-op, so callers can use one code path for both modes.
    """
    if not enabled:
        yield model
        return
    saved_modules: list[tuple[torch.nn.Module, Any]] = []
    saved_configs: list[tuple[Any, Any]] = []
    seen_configs: set[int] = set()
    for module in model.modules():
        if isinstance(getattr(module, "is_causal", None), bool):
            saved_modules.append((module, module.is_causal))
            module.is_causal = False
        config = getattr(module, "config", None)
        if config is not None and id(config) not in seen_configs and hasattr(config, "to_dict"):
            seen_configs.add(id(config))
            saved_configs.append((config, config.__dict__.get("is_causal", _MISSING)))
            config.is_causal = False
    try:
        yield model
    finally:
        for module, value in saved_modules:
            module.is_causal = value
        for config, value in saved_configs:
            if value is _MISSING:
                config.__dict__.pop("is_causal", None)
            else:
                config.is_causal = value


def bidirectional_mask(
    config: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor | Any:
    """A materialised 4D mask: every real token sees every real token, no token sees padding.

    Built by transformers for the model's attention implementation (boolean for SDPA,
    additive for eager, a block mask for flex); the skip that would return ``None`` for an
    unpadded batch is turned off, so SDPA never falls back to ``is_causal``.
    """
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(
        config=config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        allow_is_bidirectional_skip=False,
    )


def forward_hidden(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    bidirectional: bool = True,
) -> torch.Tensor:
    """Final hidden states ``[B, L, H]`` of ``model``'s body for a (left- or right-) padded batch.

    Position ids count real tokens only, so a row's states do not depend on its padding.
    """
    body = decoder_body(model)
    position_ids = positions_from_mask(attention_mask)
    if not bidirectional:
        out = body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state
    embeds = body.get_input_embeddings()(input_ids)
    mask = bidirectional_mask(body.config, embeds, attention_mask)
    with bidirectional_attention(model):
        out = body(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
            is_causal=False,
        )
    return out.last_hidden_state
