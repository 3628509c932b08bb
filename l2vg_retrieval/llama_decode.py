"""One greedy decode step of a Llama-architecture decoder, written out for a CPU.

After the prompt's pass (through the model, as usual) every decode step is one token per
row. :class:`LlamaDecodeStep` does a step's arithmetic with less around it than
transformers' modules do:

- inside a :func:`packed_weights` block (writing a training pool's responses, the
  generation benchmark) each weight is pre-packed once for oneDNN (bfloat16;
  :class:`Matmul`): ``F.linear`` reorders it into oneDNN's blocked layout on every call,
  which is 10-15% of each matmul at batch 128 here. Packing is used only where the packed
  product has ``F.linear``'s exact bits (checked on the machine, :func:`packing_matches`),
  so the tokens do not change;
- q/k/v and gate/up are one matmul each;
- keys are stored transposed (``[rows * kv_heads, head_dim, capacity]``) and values as
  ``[rows * kv_heads, capacity, head_dim]``, so the filled part of either is a strided
  matrix the batched matmul reads in place. The prompt pass's cache already stores them so
  when asked (``preallocated_cache(..., keys_transposed=True)``, as generation does), and
  the step then takes its buffers over; any other cache is copied into that layout;
- RMSNorm, rotary embedding and the final norm are the model's own modules and formulas,
  so float32 decoding picks exactly the tokens the model does (tested against
  ``model.generate``).

``benchmarks/results/ablations/decode_step_overhead.json`` measures the step side by side
(``benchmarks/experiments/decode_step_overhead.py``, 9 alternating repetitions): 0.90x the
model's step (LM head and argmax included) with packed weights, 1.02x without (the
fusions alone are within noise of transformers' step); the weight matmuls alone take 0.64x,
0.56x packed, so most of a step is arithmetic no rewrite removes. Only plain Llama-style
layers take this path (:func:`supports`): bias-free ``nn.Linear`` projections and LM head
(a LoRA-wrapped layer does not qualify, so an active adapter is never skipped), default
rotary embedding, no sliding window; anything else decodes through the model.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


class Matmul:
    """``F.linear(x, weight)``, through a copy of ``weight`` pre-packed for oneDNN when
    ``packed`` (``rows`` is the batch size oneDNN picks its layout for; any other works)."""

    def __init__(self, weight: torch.Tensor, rows: int, packed: bool) -> None:
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows) if packed else weight
        self.packed = packed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.packed:
            return F.linear(x, self.weight)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [None], "")


def packing_matches(weight: torch.Tensor, rows: int) -> bool:
    """Whether a pre-packed ``weight`` gives ``F.linear``'s exact bits here: only then is it
    used (bfloat16 with oneDNN; in float32 ``F.linear`` runs another library's kernel, whose
    rounding the float32 token checks against ``model.generate`` rely on)."""
    if weight.dtype != torch.bfloat16 or weight.device.type != "cpu":
        return False
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    try:
        # A slice of the weight is enough to tell the kernels apart, and cheap to pack.
        sample = weight[:256]
        seeded = torch.Generator().manual_seed(0)
        probe = torch.randn((rows, weight.shape[1]), generator=seeded).to(weight.dtype)
        return bool(torch.equal(Matmul(sample, rows, True)(probe), F.linear(probe, sample)))
    except RuntimeError:  # an op this build of torch lacks or refuses
        return False


def _plain_linear(module: Any) -> bool:
    return type(module) is torch.nn.Linear and module.bias is None


def supports(model: torch.nn.Module) -> bool:
    """Whether ``model``'s decoder has the plain Llama layout this step implements."""
    config = getattr(model, "config", None)
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if config is None or body is None or not hasattr(body, "layers") or not hasattr(body, "rotary_emb"):
        return False
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return False
    if getattr(config, "sliding_window", None) or getattr(config, "hidden_act", "silu") != "silu":
        return False
    if not _plain_linear(model.get_output_embeddings()):
        return False
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for layer in body.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None:
            return False
        if not all(_plain_linear(getattr(attn, n, None)) for n in _PROJECTIONS):
            return False
        if not all(_plain_linear(getattr(mlp, n, None)) for n in _MLP):
            return False
        # q_norm / k_norm (Qwen3, OLMo2) or anything else between projection and rotary.
        if any(hasattr(attn, n) for n in ("q_norm", "k_norm")):
            return False
        if attn.q_proj.out_features != config.num_attention_heads * head_dim:
            return False
    return True


_Layer = tuple[Matmul, Matmul, Matmul, Matmul]  # q/k/v, o, gate/up, down


@dataclass
class _PackedSet:
    """One model's packed weights inside :func:`packed_weights` blocks (``depth`` of them)."""

    depth: int = 0
    fingerprint: tuple[int, ...] = ()
    layers: list[_Layer] = field(default_factory=list)
    head: Matmul | None = None


_ACTIVE: weakref.WeakKeyDictionary[torch.nn.Module, _PackedSet] = weakref.WeakKeyDictionary()


@contextmanager
def packed_weights(model: torch.nn.Module) -> Iterator[None]:
    """Within this block, greedy decoding with ``model`` packs its weights once and reuses
    them for every batch; they are freed when the (outermost) block ends.

    Packing costs about 0.3 s for SmolLM2-135M and holds one more copy of the weights, so it
    pays for work of many batches (writing a training pool's responses, a benchmark), not
    for one short decode; outside a block, decoding does not pack. A parameter replaced or
    changed in place inside the block is noticed and packed again.
    """
    entry = _ACTIVE.setdefault(model, _PackedSet())
    entry.depth += 1
    try:
        yield
    finally:
        entry.depth -= 1
        if entry.depth == 0:
            _ACTIVE.pop(model, None)


def _fingerprint(model: torch.nn.Module) -> tuple[int, ...]:
    return tuple(v for p in model.parameters() for v in (p.data_ptr(), p._version))


def _step_matmuls(model: torch.nn.Module, rows: int, pack: bool | None) -> tuple[list[_Layer], Matmul]:
    """Each layer's four matmuls (q/k/v and gate/up fused) and the LM head, packed when
    asked (``None``: inside a :func:`packed_weights` block) and packing reproduces
    ``F.linear`` exactly (:func:`packing_matches`)."""
    head_weight = model.get_output_embeddings().weight
    entry = _ACTIVE.get(model)
    want = entry is not None if pack is None else pack
    if want and entry is not None and entry.head is not None and entry.fingerprint == _fingerprint(model):
        return entry.layers, entry.head  # packed (and checked) earlier in this block
    packed = want and packing_matches(head_weight, rows)

    def matmul(*weights: torch.Tensor) -> Matmul:
        return Matmul(torch.cat(weights) if len(weights) > 1 else weights[0], rows, packed)

    layers: list[_Layer] = [
        (
            matmul(*(getattr(layer.self_attn, n).weight for n in ("q_proj", "k_proj", "v_proj"))),
            matmul(layer.self_attn.o_proj.weight),
            matmul(layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight),
            matmul(layer.mlp.down_proj.weight),
        )
        for layer in model.get_decoder().layers
    ]
    head = matmul(head_weight)
    if packed and entry is not None:
        entry.fingerprint, entry.layers, entry.head = _fingerprint(model), layers, head
    return layers, head


class LlamaDecodeStep:
    """Greedy decode steps after a prompt pass that filled ``cache`` (a transformers cache
    whose layers hold ``keys`` / ``values`` ``[rows, kv_heads, length, head_dim]``).

    ``key_mask`` ``[rows, length]`` (1 = attend) is the prompt pass's attention mask when
    rows were left-padded, ``None`` when they were not. ``capacity`` is the longest the
    sequence may grow (prompt + new tokens). ``pack_weights``: ``None`` packs inside a
    :func:`packed_weights` block (reusing its packed weights), ``True`` always (packing for
    this step alone outside a block), ``False`` never.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cache: Any,
        key_mask: torch.Tensor | None,
        capacity: int,
        *,
        pack_weights: bool | None = None,
    ) -> None:
        config = model.config
        self.body = model.get_decoder()
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.group = self.heads // self.kv_heads
        self.scale = self.head_dim**-0.5
        first = cache.layers[0].keys
        rows, length = first.shape[0], first.shape[2]
        if capacity < length + 1:
            raise ValueError(f"capacity {capacity} leaves no room after {length} cached positions")
        self.matmuls, self.head = _step_matmuls(model, rows, pack_weights)
        self.packed = self.head.packed  # whether the weights are pre-packed (bfloat16, oneDNN)
        self.norms = [(layer.input_layernorm, layer.post_attention_layernorm) for layer in self.body.layers]
        self.intermediate = self.body.layers[0].mlp.gate_proj.out_features
        flat = rows * self.kv_heads
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for layer in cache.layers:
            # A cache that already stores keys transposed, with room for every step, is
            # stepped in place (no copy); any other is copied into that layout.
            buffers = layer.transposed_buffers() if hasattr(layer, "transposed_buffers") else None
            if buffers is not None and buffers[0].shape == (rows, self.kv_heads, self.head_dim, capacity):
                self.keys.append(buffers[0].view(flat, self.head_dim, capacity))
                self.values.append(buffers[1].view(flat, capacity, self.head_dim))
                continue
            keys = first.new_empty((flat, self.head_dim, capacity))
            values = first.new_empty((flat, capacity, self.head_dim))
            keys[:, :, :length] = layer.keys.reshape(flat, length, self.head_dim).transpose(1, 2)
            values[:, :length] = layer.values.reshape(flat, length, self.head_dim)
            self.keys.append(keys)
            self.values.append(values)
        self.mask: torch.Tensor | None = None
        if key_mask is not None:
            self.mask = torch.ones((rows, capacity), dtype=torch.bool, device=first.device)
            self.mask[:, :length] = key_mask.bool()
        self.rows, self.length = rows, length

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows ``keep`` indexes (finished rows leave the batch)."""
        flat = (keep[:, None] * self.kv_heads + torch.arange(self.kv_heads, device=keep.device)).reshape(-1)
        self.keys = [k[flat] for k in self.keys]
        self.values = [v[flat] for v in self.values]
        if self.mask is not None:
            self.mask = self.mask[keep]
        self.rows = int(keep.numel())

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One step: ``tokens`` ``[rows]`` at ``positions`` ``[rows]`` -> the final normed
        hidden state ``[rows, hidden]`` (the LM head's input)."""
        rows, t = self.rows, self.length
        if t >= self.keys[0].shape[-1]:
            raise RuntimeError("the decode cache is full: capacity must cover prompt + new tokens")
        x = self.body.embed_tokens(tokens)
        cos, sin = self.body.rotary_emb(x[:, None], positions[:, None])
        cos = cos.to(x.dtype).reshape(rows, 1, self.head_dim)
        sin = sin.to(x.dtype).reshape(rows, 1, self.head_dim)
        heads, kv, dim = self.heads, self.kv_heads, self.head_dim
        flat = rows * kv
        mask = None if self.mask is None else self.mask[:, None, None, : t + 1]
        for keys, values, (qkv_w, o_w, gate_up_w, down_w), (norm1, norm2) in zip(
            self.keys, self.values, self.matmuls, self.norms, strict=True
        ):
            qkv = qkv_w(norm1(x)).view(rows, heads + 2 * kv, dim)
            # Queries and keys rotate together (one set of elementwise ops, not two); each
            # element's arithmetic is the model's own.
            qk = self._rotate(qkv[:, : heads + kv], cos, sin)
            # Written straight into the cache's views: no intermediate copy.
            keys.view(rows, kv, dim, -1)[:, :, :, t] = qk[:, heads:]
            values.view(rows, kv, -1, dim)[:, :, t] = qkv[:, heads + kv :]
            # Scaled after the product, in float32, as the model's own attention does: the
            # same rounding, so float32 decoding picks the same tokens.
            scores = torch.bmm(qk[:, :heads].reshape(flat, self.group, dim), keys[:, :, : t + 1]).float()
            scores = scores * self.scale
            if mask is not None:
                scores = scores.view(rows, kv, self.group, t + 1).masked_fill(~mask, float("-inf"))
                scores = scores.view(flat, self.group, t + 1)
            weights = torch.softmax(scores, dim=-1).to(x.dtype)
            attended = torch.bmm(weights, values[:, : t + 1]).reshape(rows, heads * dim)
            x = x + o_w(attended)
            gate, up = gate_up_w(norm2(x)).split(self.intermediate, dim=-1)
            x = x + down_w(F.silu(gate) * up)
        self.length = t + 1
        return self.body.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on :meth:`__call__`'s output, through the step's (maybe packed) weight."""
        with torch.inference_mode():
            return self.head(hidden)
