"""U-Net building blocks (Ho et al. 2020; Dhariwal & Nichol 2021). Kernels carry logical axis
names (``conv_in``, ``conv_out``, ``embed``, ``mlp``); the experiment's rules map them to mesh axes."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

KERNEL_AXES_CONV = (None, None, "conv_in", "conv_out")
KERNEL_AXES_DENSE = ("embed", "mlp")


def conv(features, kernel=3, stride=1, dtype=jnp.float32, param_dtype=jnp.float32, zero=False,
         name=None, padding="SAME", use_bias=True):
    """``padding``: "SAME", "VALID" or an int ``p`` (torch's ``padding=p`` on every side)."""
    init = nn.initializers.zeros if zero else nn.initializers.variance_scaling(
        1.0, "fan_avg", "uniform")
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                   use_bias=use_bias,
                   dtype=dtype, param_dtype=param_dtype,
                   kernel_init=nn.with_logical_partitioning(init, KERNEL_AXES_CONV), name=name)


def dense(features, dtype=jnp.float32, param_dtype=jnp.float32, zero=False, name=None,
          use_bias=True):
    init = nn.initializers.zeros if zero else nn.initializers.variance_scaling(
        1.0, "fan_avg", "uniform")
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
                    kernel_init=nn.with_logical_partitioning(init, KERNEL_AXES_DENSE), name=name)


# Query/key block sizes of the blocked attention XLA:CPU gets for long sequences (measured on a
# 2-core host, [2, 4096, 8, 40] float32: jax.nn.dot_product_attention 2.2 s, blocked 0.53 s;
# torch's SDPA 0.18 s), and the score-matrix size from which it is used.
CPU_BLOCKS = (512, 1024)
CPU_BLOCKED_FROM = 2 ** 22


def blocked_attention(q, k, v, block_q: int = CPU_BLOCKS[0], block_k: int = CPU_BLOCKS[1]):
    """Softmax attention without the ``[T, S]`` score matrix: queries in blocks of ``block_q``
    (``lax.map``), keys in blocks of ``block_k`` with the running max / sum of the online
    softmax (``lax.scan``; FlashAttention's recurrence). Equal to the plain softmax up to float
    rounding; the block sizes must divide the lengths."""
    b, n, h, d = q.shape
    s = k.shape[1]
    qs = (q.astype(jnp.float32) / math.sqrt(d)).reshape(b, n // block_q, block_q, h, d)
    ks = k.astype(jnp.float32).reshape(b, s // block_k, block_k, h, d).transpose(1, 0, 2, 3, 4)
    vs = v.astype(jnp.float32).reshape(b, s // block_k, block_k, h, d).transpose(1, 0, 2, 3, 4)

    def one(qq):  # [b, block_q, h, d]
        def body(carry, kv):
            m, l, acc = carry
            scores = jnp.einsum("bqhd,bkhd->bhqk", qq, kv[0])
            m_new = jnp.maximum(m, scores.max(-1))
            p = jnp.exp(scores - m_new[..., None])
            corr = jnp.exp(m - m_new)
            return (m_new, l * corr + p.sum(-1),
                    acc * corr[..., None] + jnp.einsum("bhqk,bkhd->bhqd", p, kv[1])), None

        init = (jnp.full((b, h, block_q), -jnp.inf), jnp.zeros((b, h, block_q)),
                jnp.zeros((b, h, block_q, d)))
        (_, l, acc), _ = jax.lax.scan(body, init, (ks, vs))
        return (acc / l[..., None]).transpose(0, 2, 1, 3)

    out = jax.lax.map(one, qs.transpose(1, 0, 2, 3, 4))
    return out.transpose(1, 0, 2, 3, 4).reshape(b, n, h, d).astype(q.dtype)


def attention(q, k, v, mask=None, bias=None):
    """Multi-head attention on ``[B, T, N, H]`` queries/keys/values through
    ``jax.nn.dot_product_attention``: XLA's fused attention on TPU (and on CPU for short
    sequences), cuDNN flash attention on GPUs for 16-bit inputs; on CPU, sequences whose score
    matrix has ``CPU_BLOCKED_FROM`` entries or more (a 64x64 latent's 4096 tokens) go through
    ``blocked_attention`` (4x faster there). Softmax in float32 whatever the compute dtype."""
    t, s = q.shape[1], k.shape[1]
    if (jax.default_backend() == "cpu" and mask is None and bias is None
            and t * s >= CPU_BLOCKED_FROM and t % CPU_BLOCKS[0] == 0 and s % CPU_BLOCKS[1] == 0):
        return blocked_attention(q, k, v)
    impl = None
    if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and mask is None:
        impl = "cudnn"
    try:
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=impl)
    except Exception:  # noqa: BLE001 - cuDNN unavailable for this shape / version: XLA's kernel
        if impl is None:
            raise
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)


def flax_attention_fn(query, key, value, bias=None, mask=None, **_):
    """``attention`` in the signature of flax's ``MultiHeadDotProductAttention(attention_fn=)``
    (dropout-free: the attention blocks here use none)."""
    return attention(query, key, value, mask=mask, bias=bias)


# Rematerialisation policies selectable in an experiment (``model.remat``): "full" recomputes a
# block's activations in the backward pass, "dots" keeps the matmul outputs and recomputes the rest.
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def remat_policy(name: str):
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {name!r}; valid: none, {', '.join(REMAT_POLICIES)}")
    return REMAT_POLICIES[name]


def timestep_embedding(t, dim: int, max_period: float = 10_000.0):
    """Sinusoidal embedding of ``t`` [B] (already scaled, e.g. ``1000 t``), shape ``[B, dim]``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def time_columns(t) -> list:
    """A network's time input as a list of ``[B]`` arrays: ``t [B]`` (or a scalar) is one time;
    ``t [B, k]`` is ``k`` times each embedded by its own MLP and summed (MeanFlow's ``(t, t-r)``)."""
    t = jnp.asarray(t)
    return [t] if t.ndim <= 1 else [t[:, j] for j in range(t.shape[1])]


def group_norm(channels: int, dtype):
    return nn.GroupNorm(num_groups=min(32, channels // 4) or 1, dtype=dtype)


class ResBlock(nn.Module):
    features: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(group_norm(x.shape[-1], self.dtype)(x))
        h = conv(self.features, **kw)(h)
        h = h + dense(self.features, **kw)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(group_norm(self.features, self.dtype)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv(self.features, zero=True, **kw)(h)
        if x.shape[-1] != self.features:
            x = conv(self.features, kernel=1, **kw)(x)
        return (x + h) / math.sqrt(2.0)


class AttnBlock(nn.Module):
    num_heads: int = 1
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        y = group_norm(c, self.dtype)(x).reshape(b, h * w, c)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
            out_kernel_init=nn.initializers.zeros, attention_fn=flax_attention_fn)(y, y)
        return (x + y.reshape(b, h, w, c)) / math.sqrt(2.0)


class CrossAttnBlock(nn.Module):
    """Image positions attend to a conditioning sequence ``context [B, L, D]`` (e.g. text-encoder
    outputs computed elsewhere), as in latent diffusion's transformer blocks (Rombach et al. 2022).
    The output projection starts at zero, so a new block is the identity."""
    num_heads: int = 1
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        b, h, w, c = x.shape
        q = group_norm(c, self.dtype)(x).reshape(b, h * w, c)
        kv = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype)(context.astype(self.dtype))
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=c, out_features=c, dtype=self.dtype,
            param_dtype=self.param_dtype, out_kernel_init=nn.initializers.zeros,
            attention_fn=flax_attention_fn)(q, kv)
        return x + y.reshape(b, h, w, c)
