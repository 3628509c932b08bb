"""A KV cache that writes into preallocated buffers instead of concatenating per step.

transformers' ``DynamicCache`` grows each layer with ``torch.cat``, which copies the whole
cache at every generated token: at batch 128 that is ~150 MB of copies per step for this
135M model, and past batch ~32 it made larger batches *slower* on a CPU. Here each layer
keeps a buffer with room for the whole generation and hands attention a view of its
filled part, so a step writes one position and copies nothing. Behaviour is otherwise
that of a ``DynamicCache`` (same class, same mask sizes), so the model code needs no
change.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def _cache_keyword() -> str:
    """The forward keyword for a KV cache: ``cache`` on transformers that renamed it (5.x
    warns that ``past_key_values`` goes away in 5.40), ``past_key_values`` before."""
    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


CACHE_KWARG = _cache_keyword()


def _layer_class() -> type | None:
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # an older transformers: callers fall back to a plain DynamicCache
        return None

    class PreallocatedLayer(DynamicLayer):  # type: ignore[misc, valid-type]
        def __init__(self, capacity: int, keys_transposed: bool = False) -> None:
            super().__init__()
            self.capacity = capacity
            self.keys_transposed = keys_transposed
            self._key_buffer: torch.Tensor | None = None
            self._value_buffer: torch.Tensor | None = None
            self._length = 0

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self._length + key_states.shape[-2]
            if self._key_buffer is None or end > self._key_buffer.shape[-2]:
                self._grow(key_states, value_states, max(end, self.capacity))
            assert self._key_buffer is not None and self._value_buffer is not None
            self._key_buffer[..., self._length : end, :] = key_states
            self._value_buffer[..., self._length : end, :] = value_states
            self._length = end
            self.keys = self._key_buffer[..., :end, :]
            self.values = self._value_buffer[..., :end, :]
            return self.keys, self.values

        def _grow(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
            shape = (keys.shape[0], keys.shape[1], room, keys.shape[-1])
            if self.keys_transposed:
                key_buffer = keys.new_empty((*shape[:2], shape[3], room)).transpose(2, 3)
            else:
                key_buffer = keys.new_empty(shape)
            value_buffer = values.new_empty((*shape[:3], values.shape[-1]))
            if self._key_buffer is not None and self._value_buffer is not None:
                key_buffer[..., : self._length, :] = self._key_buffer[..., : self._length, :]
                value_buffer[..., : self._length, :] = self._value_buffer[..., : self._length, :]
            self._key_buffer, self._value_buffer = key_buffer, value_buffer
            self.capacity = room

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self._key_buffer is None or self._value_buffer is None:
                return
            if self.keys_transposed:  # rows selected in the transposed storage keep its layout
                self._key_buffer = self._key_buffer.transpose(2, 3)[indices].transpose(2, 3)
            else:
                self._key_buffer = self._key_buffer[indices]
            self._value_buffer = self._value_buffer[indices]
            self.keys = self._key_buffer[..., : self._length, :]
            self.values = self._value_buffer[..., : self._length, :]

        def transposed_buffers(self) -> tuple[torch.Tensor, torch.Tensor] | None:
            """With ``keys_transposed``, the whole buffers: keys ``[B, KV, D, room]`` and
            values ``[B, KV, room, D]``, both contiguous, for a decoder that keeps stepping in
            them (``llama_decode``); ``None`` otherwise."""
            if not self.keys_transposed or self._key_buffer is None or self._value_buffer is None:
                return None
            keys = self._key_buffer.transpose(2, 3)
            if not (keys.is_contiguous() and self._value_buffer.is_contiguous()):
                return None
            return keys, self._value_buffer

    return PreallocatedLayer


_LAYER = _layer_class()


def preallocated_cache(config: Any, capacity: int, *, keys_transposed: bool = False) -> Any:
    """A ``DynamicCache`` for ``config`` whose layers hold ``capacity`` positions up front.

    ``keys_transposed`` stores each layer's keys as ``[B, KV, D, capacity]`` (attention is
    handed the same ``[B, KV, T, D]`` views, strided), the layout
    :class:`l2vg_retrieval.llama_decode.LlamaDecodeStep` steps in: it then takes the buffers
    over after the prompt's pass instead of copying them."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    n_layers = int(getattr(config, "num_hidden_layers", 0))
    if _LAYER is None or not hasattr(cache, "layers") or not n_layers:
        return cache
    cache.layers = [_LAYER(capacity, keys_transposed) for _ in range(n_layers)]
    return cache
