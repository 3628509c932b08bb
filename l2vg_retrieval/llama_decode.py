"""One greedy decode step of a Llama-architecture decoder, written out for a CPU.

After the prompt's pass (through the model, as usual) every decode step is one token per
row. Through transformers a step costs its weight matmuls and about half as much again on
this 2-core machine (batch 128, SmolLM2-135M): per-layer module dispatch, mask and cache bookkeeping,
and a copy of each layer's keys and values so that attention reads contiguous memory.
:class:`LlamaDecodeStep` does the same arithmetic with less around it:

- q/k/v and gate/up are one matmul each (weights concatenated once per generation call);
- the cache is its own: keys stored transposed (``[rows * kv_heads, head_dim, capacity]``)
  and values as ``[rows * kv_heads, capacity, head_dim]``, so the filled part of either is
  a strided matrix the batched matmul reads in place: nothing is copied per layer;
- RMSNorm, rotary embedding and the final norm are the model's own modules and formulas,
  so float32 decoding picks exactly the tokens the model does (tested against
  ``model.generate``).

``benchmarks/results/ablations/decode_step_overhead.json`` measures the step side by side
(``benchmarks/experiments/decode_step_overhead.py``): 0.95x the model's step, the matmuls
alone 0.66x, so most of a step is arithmetic no rewrite removes. Only plain Llama-style layers take
this path (:func:`supports`): bias-free ``nn.Linear`` projections (a LoRA-wrapped layer
does not qualify, so an active adapter is never skipped), default rotary embedding, no
sliding window; anything else decodes through the model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


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


class LlamaDecodeStep:
    """Greedy decode steps after a prompt pass that filled ``cache`` (a transformers cache
    whose layers hold ``keys`` / ``values`` ``[rows, kv_heads, length, head_dim]``).

    ``key_mask`` ``[rows, length]`` (1 = attend) is the prompt pass's attention mask when
    rows were left-padded, ``None`` when they were not. ``capacity`` is the longest the
    sequence may grow (prompt + new tokens).
    """

    def __init__(
        self, model: torch.nn.Module, cache: Any, key_mask: torch.Tensor | None, capacity: int
    ) -> None:
        config = model.config
        self.body = model.get_decoder()
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.group = self.heads // self.kv_heads
        self.scale = self.head_dim**-0.5
        self.weights = [
            (
                torch.cat(
                    [
                        layer.self_attn.q_proj.weight,
                        layer.self_attn.k_proj.weight,
                        layer.self_attn.v_proj.weight,
                    ]
                ),
                layer.self_attn.o_proj.weight,
                torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]),
                layer.mlp.down_proj.weight,
                layer.input_layernorm,
                layer.post_attention_layernorm,
            )
            for layer in self.body.layers
        ]
        self.intermediate = self.body.layers[0].mlp.gate_proj.out_features
        first = cache.layers[0].keys
        rows, length = first.shape[0], first.shape[2]
        if capacity < length + 1:
            raise ValueError(f"capacity {capacity} leaves no room after {length} cached positions")
        flat = rows * self.kv_heads
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for layer in cache.layers:
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
        n_q, n_kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        flat = rows * self.kv_heads
        mask = None if self.mask is None else self.mask[:, None, None, : t + 1]
        for keys, values, (qkv_w, o_w, gate_up_w, down_w, norm1, norm2) in zip(
            self.keys, self.values, self.weights, strict=True
        ):
            qkv = F.linear(norm1(x), qkv_w)
            q = self._rotate(qkv[:, :n_q].reshape(rows, self.heads, self.head_dim), cos, sin)
            k = self._rotate(qkv[:, n_q : n_q + n_kv].reshape(rows, self.kv_heads, self.head_dim), cos, sin)
            keys[:, :, t] = k.reshape(flat, self.head_dim)
            values[:, t] = qkv[:, n_q + n_kv :].reshape(flat, self.head_dim)
            # Scaled after the product, in float32, as the model's own attention does: the
            # same rounding, so float32 decoding picks the same tokens.
            scores = torch.bmm(q.reshape(flat, self.group, self.head_dim), keys[:, :, : t + 1]).float()
            scores = scores * self.scale
            if mask is not None:
                scores = scores.view(rows, self.kv_heads, self.group, t + 1).masked_fill(~mask, float("-inf"))
                scores = scores.view(flat, self.group, t + 1)
            weights = torch.softmax(scores, dim=-1).to(x.dtype)
            attended = torch.bmm(weights, values[:, : t + 1]).reshape(rows, n_q)
            x = x + F.linear(attended, o_w)
            gate, up = F.linear(norm2(x), gate_up_w).split(self.intermediate, dim=-1)
            x = x + F.linear(F.silu(gate) * up, down_w)
        self.length = t + 1
        return self.body.norm(x)
