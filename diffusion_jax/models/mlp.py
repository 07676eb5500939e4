"""An MLP denoiser backbone for low-dimensional data (toy mixtures)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import dense, time_columns, timestep_embedding


class MLP(nn.Module):
    """``num_classes > 0``: class-conditional, labels ``y [B]`` embedded (the label
    ``num_classes`` is the null class of classifier-free guidance)."""
    hidden: int = 128
    depth: int = 3
    time_scale: float = 1000.0
    num_classes: int = 0

    @nn.compact
    def __call__(self, x, t, y=None, train: bool = False, context=None, low_res=None):
        del context, low_res  # the networks' shared signature; refused at build time
        # ``t [B, k]``: k times (MeanFlow's ``(t, t - r)``), each embedded
        parts = [x] + [timestep_embedding(self.time_scale * tj, 32) for tj in time_columns(t)]
        if self.num_classes:
            if y is None:
                raise ValueError("this MLP is class-conditional: pass labels y (the null class "
                                 f"{self.num_classes} for unconditional outputs)")
            parts.append(nn.Embed(self.num_classes + 1, 32, name="label_embed")(y))
        h = jnp.concatenate(parts, axis=-1)
        for _ in range(self.depth):
            h = nn.silu(dense(self.hidden)(h))
        return dense(x.shape[-1], zero=True)(h)
