"""diffusers' ``UNet2DConditionModel`` (the Stable Diffusion 1.x/2.x latent U-Net) as a
flax.linen module, NHWC: the ``UNet2DModel`` resnets, down/upsamplers and time embedding of
``unet2d.py`` plus ``Transformer2DModel`` blocks that self-attend and cross-attend to a text
encoder's hidden states.

    net = UNet2DCondition(UNet2DConditionConfig(cross_attention_dim=768, ...))
    eps = net.apply({"params": p}, latents, timesteps, context)   # context [B, L, 768]

``attention_head_dim`` is diffusers' (mis)name for the number of heads per block, an int or one
per block (SD 2.x: ``[5, 10, 20, 20]``); ``num_attention_heads`` overrides it when set.
``use_linear_projection`` (SD 2.x) makes ``proj_in``/``proj_out`` dense layers instead of 1x1
convolutions. ``upcast_attention`` is always honoured: the softmax runs in float32.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import attention, conv, dense
from diffusion_jax.models.unet2d import (ACTIVATIONS, DownBlock, Downsample, ResnetBlock2D,
                                         TimeEmbedding, UNet2DConfig, UpBlock, Upsample,
                                         group_norm, timestep_embedding)

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn",)


@dataclasses.dataclass(frozen=True)
class UNet2DConditionConfig:
    """The fields of a diffusers ``UNet2DConditionModel`` ``config.json`` this module reads."""
    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                               "CrossAttnDownBlock2D", "DownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                             "CrossAttnUpBlock2D")
    only_cross_attention: bool = False
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int = 1
    attention_head_dim: int | tuple = 8
    num_attention_heads: int | tuple | None = None
    dual_cross_attention: bool = False
    use_linear_projection: bool = False
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    num_class_embeds: int | None = None
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    time_cond_proj_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    attention_type: str = "default"

    def heads(self) -> tuple[int, ...]:
        h = self.num_attention_heads or self.attention_head_dim
        return tuple(h) if isinstance(h, (tuple, list)) else (h,) * len(self.block_out_channels)

    def problems(self) -> list[str]:
        out = [f"down_block_types has {b!r} (supported: {', '.join(DOWN_BLOCKS)})"
               for b in self.down_block_types if b not in DOWN_BLOCKS]
        out += [f"up_block_types has {b!r} (supported: {', '.join(UP_BLOCKS)})"
                for b in self.up_block_types if b not in UP_BLOCKS]
        checks = [("mid_block_type", MID_BLOCKS), ("act_fn", tuple(ACTIVATIONS)),
                  ("class_embed_type", (None,)), ("addition_embed_type", (None,)),
                  ("num_class_embeds", (None,)), ("time_embedding_type", ("positional",)),
                  ("time_cond_proj_dim", (None,)), ("only_cross_attention", (False,)),
                  ("dual_cross_attention", (False,)), ("resnet_time_scale_shift", ("default",)),
                  ("conv_in_kernel", (3,)), ("conv_out_kernel", (3,)),
                  ("attention_type", ("default",))]
        out += [f"{f}={getattr(self, f)!r} (supported: {', '.join(map(str, ok))})"
                for f, ok in checks if getattr(self, f) not in ok]
        for f in ("layers_per_block", "transformer_layers_per_block", "cross_attention_dim"):
            if not isinstance(getattr(self, f), int):
                out.append(f"{f}={getattr(self, f)!r} (supported: one int for every block)")
        n = len(self.block_out_channels)
        if not len(self.down_block_types) == len(self.up_block_types) == len(self.heads()) == n:
            out.append(f"{n} block_out_channels but {len(self.down_block_types)} down blocks, "
                       f"{len(self.up_block_types)} up blocks and {len(self.heads())} head "
                       "counts (they must be equal)")
        return out

    def resnets(self) -> UNet2DConfig:
        """The settings the shared resnet/down/up blocks of ``unet2d.py`` read."""
        return UNet2DConfig(block_out_channels=tuple(self.block_out_channels),
                            layers_per_block=self.layers_per_block,
                            downsample_padding=self.downsample_padding, dropout=self.dropout,
                            act_fn=self.act_fn, norm_num_groups=self.norm_num_groups,
                            norm_eps=self.norm_eps)


class CrossAttention(nn.Module):
    """diffusers' ``Attention``: q from ``x``, k/v from ``context`` (``x`` itself when None), no
    biases on q/k/v, ``to_out_0`` with a bias."""
    heads: int
    head_dim: int
    bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        context = x if context is None else context
        b, n, d = x.shape
        inner = self.heads * self.head_dim
        q = dense(inner, name="to_q", use_bias=self.bias, dtype=self.dtype)(x)
        k = dense(inner, name="to_k", use_bias=self.bias, dtype=self.dtype)(context)
        v = dense(inner, name="to_v", use_bias=self.bias, dtype=self.dtype)(context)
        split = lambda a: a.reshape(a.shape[0], a.shape[1], self.heads, self.head_dim)
        a = attention(split(q), split(k), split(v)).reshape(b, n, inner)
        return dense(d, name="to_out_0", dtype=self.dtype)(a)


class FeedForward(nn.Module):
    """``net_0`` (GEGLU: one projection to twice the inner width, ``h * gelu(gate)``, or a GELU
    projection) then ``net_2``."""
    dim: int
    activation: str = "geglu"        # geglu | gelu | gelu-approximate
    mult: int = 4
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        inner = self.dim * self.mult
        if self.activation == "geglu":
            h, gate = jnp.split(Proj(2 * inner, self.dtype, name="net_0")(x), 2, axis=-1)
            h = h * nn.gelu(gate, approximate=False)
        else:
            h = nn.gelu(Proj(inner, self.dtype, name="net_0")(x),
                        approximate=self.activation == "gelu-approximate")
        return dense(self.dim, name="net_2", dtype=self.dtype)(h)


class Proj(nn.Module):
    """The activation modules' ``proj`` (``ff.net.0.proj``)."""
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return dense(self.features, name="proj", dtype=self.dtype)(x)


def layer_norm(name, eps=1e-5, affine=True):
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, use_bias=affine, use_scale=affine,
                        name=name)


class BasicTransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention and GEGLU feed-forward, each residual."""
    heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        kw = dict(dtype=self.dtype)
        x = x + CrossAttention(self.heads, self.head_dim, **kw, name="attn1")(layer_norm("norm1")(x))
        x = x + CrossAttention(self.heads, self.head_dim, **kw, name="attn2")(layer_norm("norm2")(x),
                                                                            context)
        return x + FeedForward(x.shape[-1], **kw, name="ff")(layer_norm("norm3")(x))


class Transformer2D(nn.Module):
    """``Transformer2DModel`` on a feature map: group norm, ``proj_in``, the blocks, ``proj_out``,
    plus the input."""
    heads: int
    layers: int
    groups: int
    linear: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        b, hh, ww, c = x.shape
        kw = dict(dtype=self.dtype)
        h = group_norm(self.groups, 1e-6, "norm")(x)
        if self.linear:
            h = dense(c, name="proj_in", **kw)(h.reshape(b, hh * ww, c))
        else:
            h = conv(c, kernel=1, padding=0, name="proj_in", **kw)(h).reshape(b, hh * ww, c)
        for i in range(self.layers):
            h = BasicTransformerBlock(self.heads, c // self.heads, **kw,
                                      name=f"transformer_blocks_{i}")(h, context)
        if self.linear:
            h = dense(c, name="proj_out", **kw)(h).reshape(b, hh, ww, c)
        else:
            h = conv(c, kernel=1, padding=0, name="proj_out", **kw)(h.reshape(b, hh, ww, c))
        return h + x


class CrossAttnDownBlock(nn.Module):
    out_channels: int
    heads: int
    cfg: UNet2DConditionConfig
    add_downsample: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, temb, context, train: bool = False):
        cfg, c, kw, outs = self.cfg, self.out_channels, dict(dtype=self.dtype), []
        for i in range(cfg.layers_per_block):
            h = ResnetBlock2D(c, cfg.resnets(), **kw, name=f"resnets_{i}")(h, temb, train)
            h = Transformer2D(self.heads, cfg.transformer_layers_per_block, cfg.norm_num_groups,
                              cfg.use_linear_projection, **kw, name=f"attentions_{i}")(h, context)
            outs.append(h)
        if self.add_downsample:
            h = Downsample(c, cfg.downsample_padding, **kw, name="downsamplers_0")(h)
            outs.append(h)
        return h, outs


class CrossAttnUpBlock(nn.Module):
    out_channels: int
    heads: int
    cfg: UNet2DConditionConfig
    add_upsample: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, skips, temb, context, train: bool = False):
        cfg, c, kw = self.cfg, self.out_channels, dict(dtype=self.dtype)
        for i in range(cfg.layers_per_block + 1):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = ResnetBlock2D(c, cfg.resnets(), **kw, name=f"resnets_{i}")(h, temb, train)
            h = Transformer2D(self.heads, cfg.transformer_layers_per_block, cfg.norm_num_groups,
                              cfg.use_linear_projection, **kw, name=f"attentions_{i}")(h, context)
        if self.add_upsample:
            h = Upsample(c, **kw, name="upsamplers_0")(h)
        return h


class CrossAttnMidBlock(nn.Module):
    cfg: UNet2DConditionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, temb, context, train: bool = False):
        cfg, kw = self.cfg, dict(dtype=self.dtype)
        c, s = cfg.block_out_channels[-1], cfg.mid_block_scale_factor
        h = ResnetBlock2D(c, cfg.resnets(), scale=s, **kw, name="resnets_0")(h, temb, train)
        h = Transformer2D(cfg.heads()[-1], cfg.transformer_layers_per_block, cfg.norm_num_groups,
                          cfg.use_linear_projection, **kw, name="attentions_0")(h, context)
        return ResnetBlock2D(c, cfg.resnets(), scale=s, **kw, name="resnets_1")(h, temb, train)


class UNet2DCondition(nn.Module):
    """``apply(params, x [B,H,W,C], timesteps [B] or [], context [B,L,D]) -> out`` (epsilon or
    v, as the scheduler's ``prediction_type`` says)."""
    config: UNet2DConditionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, timesteps, context, train: bool = False):
        cfg, kw = self.config, dict(dtype=self.dtype)
        if context is None or context.ndim != 3 or context.shape[-1] != cfg.cross_attention_dim:
            raise ValueError(f"this U-Net cross-attends to a context [B, L, "
                             f"{cfg.cross_attention_dim}]; got "
                             f"{None if context is None else tuple(context.shape)}")
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), x.shape[:1])
        c0 = cfg.block_out_channels[0]
        temb = TimeEmbedding(cfg.time_embedding_dim or 4 * c0, **kw, name="time_embedding")(
            timestep_embedding(t, c0, cfg.flip_sin_to_cos, cfg.freq_shift))
        context = context.astype(self.dtype)
        h = conv(c0, padding=1, name="conv_in", **kw)(x.astype(self.dtype))
        skips, heads, n = [h], cfg.heads(), len(cfg.block_out_channels)
        for i, kind in enumerate(cfg.down_block_types):
            c = cfg.block_out_channels[i]
            if kind == "CrossAttnDownBlock2D":
                h, outs = CrossAttnDownBlock(c, heads[i], cfg, i < n - 1, **kw,
                                             name=f"down_blocks_{i}")(h, temb, context, train)
            else:
                h, outs = DownBlock("DownBlock2D", c, cfg.resnets(), i < n - 1, **kw,
                                    name=f"down_blocks_{i}")(h, temb, train)
            skips += outs
        h = CrossAttnMidBlock(cfg, **kw, name="mid_block")(h, temb, context, train)
        rev, rev_heads = tuple(reversed(cfg.block_out_channels)), tuple(reversed(heads))
        for i, kind in enumerate(cfg.up_block_types):
            if kind == "CrossAttnUpBlock2D":
                h = CrossAttnUpBlock(rev[i], rev_heads[i], cfg, i < n - 1, **kw,
                                     name=f"up_blocks_{i}")(h, skips, temb, context, train)
            else:
                h = UpBlock("UpBlock2D", rev[i], cfg.resnets(), i < n - 1, **kw,
                            name=f"up_blocks_{i}")(h, skips, temb, train)
        h = ACTIVATIONS[cfg.act_fn](group_norm(cfg.norm_num_groups, cfg.norm_eps,
                                               "conv_norm_out")(h))
        return conv(cfg.out_channels, padding=1, name="conv_out", **kw)(h).astype(jnp.float32)
