"""An MLP denoiser backbone for low-dimensional data (toy mixtures)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import dense, time_columns, timestep_embedding


class MLP(nn.Module):
    hidden: int = 128
    depth: int = 3
    time_scale: float = 1000.0

    @nn.compact
    def __call__(self, x, t, y=None, train: bool = False):
        # ``t [B, k]``: k times (MeanFlow's ``(t, t - r)``), each embedded
        h = jnp.concatenate([x] + [timestep_embedding(self.time_scale * tj, 32)
                                   for tj in time_columns(t)], axis=-1)
        for _ in range(self.depth):
            h = nn.silu(dense(self.hidden)(h))
        return dense(x.shape[-1], zero=True)(h)
