"""A small CNN classifier for 28x28 images: the offline feature extractor for FID/KID/PR
(``features`` = the penultimate layer) and, with ``noise_conditional=True``, the noisy-image
classifier of classifier guidance."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import conv, dense, timestep_embedding


class Classifier(nn.Module):
    num_classes: int = 10
    channels: int = 32
    feature_dim: int = 128
    noise_conditional: bool = False
    time_scale: float = 1000.0
    head: str = "mean"  # "mean": global average pool; "flatten": keep the 7x7 layout (28x28 input)

    @nn.compact
    def __call__(self, x, t=None, train: bool = False, return_features: bool = False):
        h = x
        emb = None
        if self.noise_conditional:
            emb = nn.silu(dense(self.channels * 4)(timestep_embedding(self.time_scale * t, 64)))
        for i, mult in enumerate((1, 2, 4)):
            h = conv(self.channels * mult)(h)
            if emb is not None:
                h = h + dense(self.channels * mult)(emb)[:, None, None, :]
            h = nn.silu(nn.GroupNorm(num_groups=8)(h))
            h = conv(self.channels * mult)(h)
            h = nn.silu(nn.GroupNorm(num_groups=8)(h))
            if i < 2:
                h = nn.avg_pool(h, (2, 2), (2, 2))
        if self.head == "flatten":
            h = h.reshape(h.shape[0], -1)
        elif self.head == "mean":
            h = jnp.mean(h, axis=(1, 2))
        else:
            raise ValueError(f"unknown classifier head {self.head!r}; valid: 'mean', 'flatten'")
        feats = nn.silu(dense(self.feature_dim)(h))
        feats = nn.Dropout(0.2, deterministic=not train)(feats)
        logits = dense(self.num_classes)(feats)
        return (logits, feats) if return_features else logits
