"""DiT (Peebles & Xie 2023): a transformer denoiser on image patches.

patchify (a dense layer on each ``p x p`` patch) -> + fixed 2-D sin-cos position embedding ->
``depth`` blocks of [adaLN-Zero, self-attention, adaLN-Zero, MLP] conditioned on the time (and
class) embedding -> final adaLN layer -> unpatchify. Every modulation and the output layer start
at zero, so each block starts as the identity and the network's first output is zero.

Kernels carry logical axis names (``embed``, ``mlp``, ``heads``, ``kv``, ``patch``): the
experiment's sharding rules place them (FSDP shards ``mlp`` and ``kv``). Attention goes through
``jax.nn.dot_product_attention`` (``layers.attention``); ``remat`` recomputes each block in the
backward pass; ``dtype`` is the compute dtype (parameters stay float32, LayerNorm statistics
are computed in float32).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.layers import attention, remat_policy, timestep_embedding


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 0          # > 0: class-conditional; label ``num_classes`` is the null class
    time_scale: float = 1000.0
    out_channels: int | None = None
    remat: str = "none"           # none | full | dots (layers.REMAT_POLICIES)


def check_patch_size(image_size: int, patch_size: int) -> None:
    if patch_size < 1 or image_size % patch_size:
        raise ValueError(f"model.patch_size={patch_size} must divide data.image_size="
                         f"{image_size}; choose a divisor of {image_size}")


def sincos_2d(grid: int, dim: int) -> np.ndarray:
    """The fixed ``[grid * grid, dim]`` position embedding: half the channels encode the row, half
    the column, each as sines and cosines of geometrically spaced frequencies."""
    if dim % 4:
        raise ValueError(f"the DiT hidden size {dim} must be divisible by 4 (sin-cos embedding)")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    pos = np.arange(grid, dtype=np.float64)
    rows, cols = np.meshgrid(pos, pos, indexing="ij")

    def emb(p):
        out = np.outer(p.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([emb(rows), emb(cols)], axis=1).astype(np.float32)


def patchify(x, p: int):
    """``[B, H, W, C] -> [B, (H/p)(W/p), p*p*C]`` (row-major patches)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x, p: int, h: int, w: int):
    b, _, d = x.shape
    c = d // (p * p)
    x = x.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def _dense(features, axes, dtype, zero=False, name=None):
    init = nn.initializers.zeros if zero else nn.initializers.xavier_uniform()
    return nn.Dense(features, dtype=dtype, kernel_init=nn.with_logical_partitioning(init, axes),
                    name=name)


def _modulate(x, shift, scale):
    return x * (1.0 + scale[:, None]) + shift[:, None]


def _layer_norm(x):
    """LayerNorm without affine parameters, statistics in float32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean((x32 - mean) ** 2, -1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + 1e-6)).astype(x.dtype)


class SelfAttention(nn.Module):
    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        hd = d // self.num_heads
        qkv = nn.DenseGeneral((3, self.num_heads, hd), dtype=self.dtype, name="qkv",
                              kernel_init=nn.with_logical_partitioning(
                                  nn.initializers.xavier_uniform(),
                                  ("embed", None, "heads", "kv")))(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        y = attention(q, k, v)
        return nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype, name="proj",
                               kernel_init=nn.with_logical_partitioning(
                                   nn.initializers.xavier_uniform(), ("heads", "kv", "embed")))(y)


class DiTBlock(nn.Module):
    num_heads: int
    mlp_ratio: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, c):
        d = x.shape[-1]
        mod = _dense(6 * d, ("embed", "mlp"), self.dtype, zero=True, name="adaLN")(nn.silu(c))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
        h = SelfAttention(self.num_heads, self.dtype, name="attn")(
            _modulate(_layer_norm(x), shift_a, scale_a))
        x = x + gate_a[:, None] * h
        hidden = int(d * self.mlp_ratio)
        h = _modulate(_layer_norm(x), shift_m, scale_m)
        h = nn.gelu(_dense(hidden, ("embed", "mlp"), self.dtype, name="fc1")(h), approximate=True)
        h = _dense(d, ("mlp", "embed"), self.dtype, name="fc2")(h)
        return x + gate_m[:, None] * h


class DiT(nn.Module):
    config: DiTConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, y=None, train: bool = False, context=None, low_res=None):
        cfg, p = self.config, self.config.patch_size
        if context is not None or low_res is not None:
            raise ValueError("the DiT takes time and class conditioning only (no context or "
                             "low-res input); use the U-Net for those")
        b, h, w, ch = x.shape
        check_patch_size(h, p)
        d = cfg.hidden_size
        tokens = _dense(d, ("patch", "embed"), self.dtype, name="patch_embed")(
            patchify(x.astype(self.dtype), p))
        tokens = tokens + jnp.asarray(sincos_2d(h // p, d), self.dtype)[None]
        c = timestep_embedding(cfg.time_scale * t, 256)
        c = _dense(d, ("patch", "mlp"), self.dtype, name="t_mlp1")(c)
        c = _dense(d, ("embed", "mlp"), self.dtype, name="t_mlp2")(nn.silu(c))
        if cfg.num_classes:
            if y is None:
                y = jnp.full((b,), cfg.num_classes, jnp.int32)  # the null class
            c = c + nn.Embed(cfg.num_classes + 1, d, dtype=self.dtype,
                             embedding_init=nn.initializers.normal(0.02), name="y_embed")(y)
        block = DiTBlock
        if cfg.remat != "none":
            block = nn.remat(DiTBlock, policy=remat_policy(cfg.remat))
        for i in range(cfg.depth):
            tokens = block(cfg.num_heads, cfg.mlp_ratio, self.dtype, name=f"block{i}")(tokens, c)
        shift, scale = jnp.split(_dense(2 * d, ("embed", "mlp"), self.dtype, zero=True,
                                        name="final_adaLN")(nn.silu(c)), 2, axis=-1)
        out_c = cfg.out_channels or ch
        out = _dense(p * p * out_c, ("embed", "patch"), self.dtype, zero=True, name="final")(
            _modulate(_layer_norm(tokens), shift, scale))
        return unpatchify(out, p, h, w).astype(jnp.float32)
