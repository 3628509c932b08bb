"""Latent-attention pooling (NV-Embed) of the K compression vectors into one.

The K vectors (queries) attend to a trainable latent array (keys and values); a two-layer
GELU MLP follows; the result is mean pooled. Both blocks are residual with a pre-norm, and
their output projections start at zero: an untrained pooler is *exactly* mean pooling, so
switching the option on starts training from the working encoder instead of from noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LatentAttentionConfig


class LatentAttentionPooling(torch.nn.Module):
    """``[B, K, H]`` → ``[B, H]``: cross-attention to latents, GELU MLP, mean over K."""

    def __init__(self, hidden: int, settings: LatentAttentionConfig, *, seed: int = 0) -> None:
        super().__init__()
        if hidden % settings.n_heads:
            raise ValueError(
                f"latent_attention.n_heads={settings.n_heads} must divide the hidden size {hidden}"
            )
        width = settings.mlp_hidden or hidden
        # Module initialisers draw from the global RNG: fork and seed it, so an untrained
        # encoder is reproducible and other code's random state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.latents = torch.nn.Parameter(torch.randn(settings.n_latents, hidden) / hidden**0.5)
            self.attention_norm = torch.nn.LayerNorm(hidden)
            self.attention = torch.nn.MultiheadAttention(hidden, settings.n_heads, batch_first=True)
            self.mlp_norm = torch.nn.LayerNorm(hidden)
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(hidden, width), torch.nn.GELU(), torch.nn.Linear(width, hidden)
            )
        with torch.no_grad():
            self.attention.out_proj.weight.zero_()
            self.attention.out_proj.bias.zero_()
            self.mlp[2].weight.zero_()
            self.mlp[2].bias.zero_()

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        states = states + self._attend_to_latents(self.attention_norm(states))
        states = states + self.mlp(self.mlp_norm(states))
        return states.mean(dim=1)

    def _attend_to_latents(self, queries: torch.Tensor) -> torch.Tensor:
        """``nn.MultiheadAttention(queries, latents, latents)`` with the module's own weights,
        but the latents' keys and values are projected once per call, not once per row:
        handing the module the latents expanded to ``[B, L, H]`` projected them B times
        (4,000 rows x 512 latents x 576 dims was ~20 GB in the head refit)."""
        mha = self.attention
        batch, k, hidden = queries.shape
        heads = mha.num_heads
        width = hidden // heads
        w_q, w_k, w_v = mha.in_proj_weight.to(queries.dtype).chunk(3)
        b_q, b_k, b_v = mha.in_proj_bias.to(queries.dtype).chunk(3)
        latents = self.latents.to(queries.dtype)
        q = F.linear(queries, w_q, b_q).view(batch, k, heads, width)
        keys = F.linear(latents, w_k, b_k).view(-1, heads, width)
        values = F.linear(latents, w_v, b_v).view(-1, heads, width)
        # einsum contracts per head with (batch x K) as one matrix side: no per-row copy
        # of the latents' keys or values.
        scores = torch.einsum("bkhd,lhd->bhkl", q, keys) / width**0.5
        attended = torch.einsum("bhkl,lhd->bkhd", scores.softmax(dim=-1), values)
        return mha.out_proj(attended.reshape(batch, k, hidden))
