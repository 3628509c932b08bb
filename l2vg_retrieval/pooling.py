"""Latent-attention pooling (NV-Embed) of the K compression vectors into one.

The K vectors (queries) attend to a trainable latent array (keys and values); a two-layer
GELU MLP follows; the result is mean pooled. Both blocks are residual with a pre-norm, and
their output projections start at zero: an untrained pooler is *exactly* mean pooling, so
switching the option on starts training from the working encoder instead of from noise.
"""

from __future__ import annotations

import torch

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
        latents = self.latents.to(states.dtype).unsqueeze(0).expand(states.shape[0], -1, -1)
        attended, _ = self.attention(self.attention_norm(states), latents, latents, need_weights=False)
        states = states + attended
        states = states + self.mlp(self.mlp_norm(states))
        return states.mean(dim=1)
