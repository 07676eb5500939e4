"""What a model is conditioned on, and how training builds that conditioning from a batch.

A conditioning is a dict of keyword arguments for the network, ``{"y": labels [B],
"context": [B, L, D], "low_res": [B, s, s, C]}`` (any subset). During training, labels are replaced
by the null class and contexts by zeros with probability ``drop_prob`` so that one network learns
both the conditional and the unconditional denoiser (classifier-free guidance, Ho & Salimans 2022);
the low-resolution input of a super-resolution model is made from the batch's own images.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Conditioning:
    num_classes: int = 0      # > 0: pass labels; ``num_classes`` is the null label
    context_dim: int = 0      # > 0: pass ``batch["context"]``
    low_res_size: int = 0     # > 0: pass the batch's images downsampled to this size
    drop_prob: float = 0.0    # labels / contexts dropped to the null condition with this prob.

    def __post_init__(self):
        if not 0.0 <= self.drop_prob < 1.0:
            raise ValueError(f"condition drop probability must be in [0, 1), got {self.drop_prob}")

    @property
    def active(self) -> bool:
        return bool(self.num_classes or self.context_dim or self.low_res_size)

    def __call__(self, batch: dict, key: Array) -> dict | None:
        """The network's conditioning kwargs for a training batch (``None``: unconditional)."""
        if not self.active:
            return None
        k_y, k_c = jax.random.split(key)
        b = batch["image"].shape[0]
        cond = {}
        if self.num_classes:
            y = batch["label"].astype(jnp.int32)
            drop = jax.random.bernoulli(k_y, self.drop_prob, (b,))
            cond["y"] = jnp.where(drop, self.num_classes, y)
        if self.context_dim:
            if "context" not in batch:
                raise ValueError("the model cross-attends to a context but the batch has no "
                                 "'context' array; add one to the data source")
            ctx = batch["context"]
            keep = ~jax.random.bernoulli(k_c, self.drop_prob, (b,))
            cond["context"] = ctx * keep[:, None, None].astype(ctx.dtype)
        if self.low_res_size:
            cond["low_res"] = downsample(batch["image"], self.low_res_size)
        return cond


def downsample(images: Array, size: int) -> Array:
    """Area (box-filter) downsampling of ``[B, H, W, C]`` images to ``size x size``; ``H`` must be a
    multiple of ``size``."""
    b, h, w, c = images.shape
    if h % size or w % size:
        raise ValueError(f"cannot downsample {h}x{w} images to {size}x{size}: the low-resolution "
                         "size must divide the image size")
    fh, fw = h // size, w // size
    return images.reshape(b, size, fh, size, fw, c).mean(axis=(2, 4))
