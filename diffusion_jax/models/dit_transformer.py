"""diffusers' ``DiTTransformer2DModel`` (``facebook/DiT-XL-2-256``; the published folder names it
``Transformer2DModel``) as a flax.linen module, NHWC latents.

Patch embedding (a ``patch x patch`` stride-``patch`` convolution plus a fixed 2-D sin-cos
position table), ``num_layers`` adaLN-Zero blocks conditioned on the timestep and class label
(``CombinedTimestepLabelEmbeddings``; label ``num_embeds_ada_norm`` is the null class of
classifier-free guidance), a final adaptive LayerNorm and the un-patching projection. The output
has ``out_channels`` channels: with a learned variance (DiT-XL/2: 8 = 2 x 4), the first
``in_channels`` are epsilon and the rest are discarded by the pipeline, as diffusers' is.

Submodules are named as the torch tree is (``transformer_blocks_3/norm1/emb/timestep_embedder``).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.layers import conv, dense
from diffusion_jax.models.unet2d import TimeEmbedding, timestep_embedding
from diffusion_jax.models.unet2d_condition import CrossAttention, FeedForward, layer_norm


@dataclasses.dataclass(frozen=True)
class DiTTransformerConfig:
    """The fields of a diffusers ``DiTTransformer2DModel`` / ``Transformer2DModel`` (patched,
    ``norm_type="ada_norm_zero"``) ``config.json``."""
    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: int | None = None
    num_layers: int = 28
    sample_size: int = 32
    patch_size: int = 2
    activation_fn: str = "gelu-approximate"
    num_embeds_ada_norm: int = 1000
    norm_type: str = "ada_norm_zero"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-5
    attention_bias: bool = True
    upcast_attention: bool = False

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def num_classes(self) -> int:
        return self.num_embeds_ada_norm

    def problems(self) -> list[str]:
        out = []
        if self.norm_type != "ada_norm_zero":
            out.append(f"norm_type={self.norm_type!r} (supported: ada_norm_zero)")
        if self.activation_fn not in ("gelu-approximate", "gelu", "geglu"):
            out.append(f"activation_fn={self.activation_fn!r} (supported: gelu-approximate, "
                       "gelu, geglu)")
        if self.norm_elementwise_affine:
            out.append("norm_elementwise_affine=True (supported: False)")
        if self.sample_size % self.patch_size:
            out.append(f"patch_size={self.patch_size} does not divide sample_size="
                       f"{self.sample_size}")
        return out


def sincos_2d(grid: int, dim: int) -> np.ndarray:
    """diffusers' ``get_2d_sincos_pos_embed`` (MAE's): ``[grid * grid, dim]``, the first half of
    the channels encoding the column, the second the row, each ``[sin, cos]``."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64),
                             indexing="ij")

    def emb(p):
        out = np.outer(p.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([emb(cols), emb(rows)], axis=1).astype(np.float32)


class PatchEmbed(nn.Module):
    dim: int
    patch: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        p = self.patch
        h = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")),
                    name="proj")(x)
        b, gh, gw, d = h.shape
        return h.reshape(b, gh * gw, d) + jnp.asarray(sincos_2d(gh, d), self.dtype)[None]


class LabelTimeEmbedding(nn.Module):
    """``CombinedTimestepLabelEmbeddings``: a 256-wide sinusoid of the timestep through two dense
    layers, plus the class's embedding (``num_classes + 1`` rows: the last is the null class)."""
    dim: int
    num_classes: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, t, y):
        temb = TimeEmbedding(self.dim, self.dtype, name="timestep_embedder")(
            timestep_embedding(t, 256, True, 1.0))
        return temb + LabelTable(self.num_classes + 1, self.dim, name="class_embedder")(y)


class LabelTable(nn.Module):
    n: int
    dim: int

    @nn.compact
    def __call__(self, y):
        return nn.Embed(self.n, self.dim, name="embedding_table")(y)


class AdaNormZero(nn.Module):
    dim: int
    num_classes: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, y):
        emb = LabelTimeEmbedding(self.dim, self.num_classes, self.dtype, name="emb")(t, y)
        mods = jnp.split(dense(6 * self.dim, name="linear", dtype=self.dtype)(nn.silu(emb)), 6, -1)
        shift, scale = mods[0], mods[1]
        x = layer_norm("norm", eps=1e-6, affine=False)(x) * (1 + scale[:, None]) + shift[:, None]
        return (x, emb) + tuple(mods[2:])


class DiTBlock(nn.Module):
    cfg: DiTTransformerConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, y):
        cfg, kw = self.cfg, dict(dtype=self.dtype)
        h, emb, gate_msa, shift_mlp, scale_mlp, gate_mlp = AdaNormZero(
            cfg.inner_dim, cfg.num_classes, **kw, name="norm1")(x, t, y)
        x = x + gate_msa[:, None] * CrossAttention(cfg.num_attention_heads, cfg.attention_head_dim,
                                                   bias=cfg.attention_bias, **kw, name="attn1")(h)
        h = layer_norm("norm3", eps=cfg.norm_eps, affine=False)(x)
        h = h * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * FeedForward(cfg.inner_dim, cfg.activation_fn, **kw,
                                                   name="ff")(h), emb


class DiTTransformer(nn.Module):
    """``apply(params, x [B,H,W,C], timesteps [B] or [], class_labels [B]) -> [B,H,W,out]``."""
    config: DiTTransformerConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, timesteps, class_labels, train: bool = False):
        cfg, kw = self.config, dict(dtype=self.dtype)
        b, hh, ww, _ = x.shape
        p, d = cfg.patch_size, cfg.inner_dim
        t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (b,))
        y = jnp.asarray(class_labels, jnp.int32)
        h = PatchEmbed(d, p, **kw, name="pos_embed")(x.astype(self.dtype))
        cond = None
        for i in range(cfg.num_layers):
            h, emb = DiTBlock(cfg, **kw, name=f"transformer_blocks_{i}")(h, t, y)
            cond = emb if cond is None else cond  # the final layer reuses block 0's embedding
        shift, scale = jnp.split(dense(2 * d, name="proj_out_1", **kw)(nn.silu(cond)), 2, -1)
        h = layer_norm("norm_out", eps=1e-6, affine=False)(h) * (1 + scale[:, None]) + shift[:, None]
        out_c = cfg.out_channels or cfg.in_channels
        h = dense(p * p * out_c, name="proj_out_2", **kw)(h)
        h = h.reshape(b, hh // p, ww // p, p, p, out_c).transpose(0, 1, 3, 2, 4, 5)
        return h.reshape(b, hh, ww, out_c).astype(jnp.float32)
