"""diffusers' ``UNet2DModel`` (the DDPM / ADM-style pixel U-Net of ``google/ddpm-*``,
``openai/diffusers-cd_*`` and ``CompVis/ldm-celebahq-256``) as a flax.linen module, NHWC.

Written from the architecture the diffusers configuration describes, with the submodules named
as diffusers names them (``down_blocks_0/resnets_1/conv1``: a torch key's list indices joined to
the name before them), so a checkpoint's ``state_dict`` maps onto the parameters by name alone
(``pretrained/convert.py``). Kernels carry logical axis names (``layers.conv``/``layers.dense``).

    net = UNet2D(UNet2DConfig(sample_size=32, block_out_channels=(128, 256, 256, 256), ...))
    out = net.apply({"params": p}, x, timesteps)      # x [B, H, W, C]; timesteps [B] (0..N-1)

Supported: the down blocks ``DownBlock2D``, ``AttnDownBlock2D``, ``ResnetDownsampleBlock2D``; the
up blocks ``UpBlock2D``, ``AttnUpBlock2D``, ``ResnetUpsampleBlock2D``; ``UNetMidBlock2D`` (or
none); ``time_embedding_type`` positional, fourier, learned; ``resnet_time_scale_shift`` default
and scale_shift; class embeddings (``num_class_embeds``); ``center_input_sample``.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import attention, conv, dense

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D")
TIME_EMBEDDINGS = ("positional", "fourier", "learned")
TIME_SCALE_SHIFTS = ("default", "scale_shift")
ACTIVATIONS = {"silu": nn.silu, "swish": nn.silu, "relu": nn.relu,
               "gelu": lambda x: nn.gelu(x, approximate=False),
               "mish": lambda x: x * jnp.tanh(nn.softplus(x))}


@dataclasses.dataclass(frozen=True)
class UNet2DConfig:
    """The fields of a diffusers ``UNet2DModel`` ``config.json``, with diffusers' defaults."""
    sample_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    freq_shift: float = 0
    flip_sin_to_cos: bool = True
    down_block_types: tuple = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                               "AttnDownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2D"
    up_block_types: tuple = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: tuple = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    dropout: float = 0.0
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    num_train_timesteps: int | None = None

    @property
    def num_classes(self) -> int:
        return self.num_class_embeds or 0

    def problems(self) -> list[str]:
        """What this implementation does not cover, as ``field=value (supported: ...)``."""
        out = [f"down_block_types has {b!r} (supported: {', '.join(DOWN_BLOCKS)})"
               for b in self.down_block_types if b not in DOWN_BLOCKS]
        out += [f"up_block_types has {b!r} (supported: {', '.join(UP_BLOCKS)})"
                for b in self.up_block_types if b not in UP_BLOCKS]
        checks = [("time_embedding_type", TIME_EMBEDDINGS), ("resnet_time_scale_shift",
                  TIME_SCALE_SHIFTS), ("act_fn", tuple(ACTIVATIONS)),
                  ("mid_block_type", ("UNetMidBlock2D", None)), ("class_embed_type", (None,)),
                  ("downsample_type", ("conv", "resnet")), ("upsample_type", ("conv", "resnet"))]
        out += [f"{f}={getattr(self, f)!r} (supported: {', '.join(map(str, ok))})"
                for f, ok in checks if getattr(self, f) not in ok]
        n = len(self.block_out_channels)
        if not len(self.down_block_types) == len(self.up_block_types) == n:
            out.append(f"{n} block_out_channels but {len(self.down_block_types)} down and "
                       f"{len(self.up_block_types)} up blocks (they must be equal)")
        if self.time_embedding_type == "learned" and not self.num_train_timesteps:
            out.append("time_embedding_type='learned' needs num_train_timesteps")
        return out


def group_norm(groups, eps, name):
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


def timestep_embedding(t, dim: int, flip_sin_to_cos: bool, shift: float, max_period=10_000.0):
    """diffusers' ``get_timestep_embedding``: ``[sin, cos]`` (``[cos, sin]`` when flipped)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - shift))
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos
                          else [jnp.sin(args), jnp.cos(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def upsample_nearest(h):
    return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


def avg_pool2(h):
    return nn.avg_pool(h, (2, 2), strides=(2, 2))


class FourierProjection(nn.Module):
    """Gaussian Fourier features of ``log t`` with fixed random frequencies ``weight``."""
    size: int

    @nn.compact
    def __call__(self, t):
        w = jax.lax.stop_gradient(self.param("weight", nn.initializers.normal(16.0), (self.size,)))
        proj = jnp.log(t.astype(jnp.float32))[:, None] * w[None] * 2 * math.pi
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class ResnetBlock2D(nn.Module):
    out_channels: int
    cfg: UNet2DConfig
    scale: float = 1.0          # output_scale_factor
    resample: str | None = None  # "up" | "down"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, train: bool = False):
        cfg, kw = self.cfg, dict(dtype=self.dtype)
        act = ACTIVATIONS[cfg.act_fn]
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        h = act(group_norm(g, eps, "norm1")(x))
        if self.resample == "up":
            x, h = upsample_nearest(x), upsample_nearest(h)
        elif self.resample == "down":
            x, h = avg_pool2(x), avg_pool2(h)
        h = conv(self.out_channels, padding=1, name="conv1", **kw)(h)
        shift = cfg.resnet_time_scale_shift == "scale_shift"
        if temb is None:  # the autoencoders' resnets have no time input
            h = group_norm(g, eps, "norm2")(h)
        else:
            temb = dense(self.out_channels * (2 if shift else 1), name="time_emb_proj", **kw)(
                act(temb))[:, None, None, :]
            if shift:
                t_scale, t_shift = jnp.split(temb, 2, axis=-1)
                h = group_norm(g, eps, "norm2")(h) * (1 + t_scale) + t_shift
            else:
                h = group_norm(g, eps, "norm2")(h + temb)
        h = nn.Dropout(cfg.dropout, deterministic=not train)(act(h))
        h = conv(self.out_channels, padding=1, name="conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, kernel=1, padding=0, name="conv_shortcut", **kw)(x)
        return (x + h) / self.scale


class Attention(nn.Module):
    """The spatial self-attention block (``_from_deprecated_attn_block``): group norm,
    q/k/v projections, softmax attention in float32, output projection, residual, rescale."""
    head_dim: int
    groups: int | None
    eps: float
    scale: float = 1.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        h = x if self.groups is None else group_norm(self.groups, self.eps, "group_norm")(x)
        h = h.reshape(b, hh * ww, c)
        heads = c // self.head_dim
        q, k, v = (dense(heads * self.head_dim, name=n, dtype=self.dtype)(h).reshape(
            b, hh * ww, heads, self.head_dim) for n in ("to_q", "to_k", "to_v"))
        a = attention(q, k, v).reshape(b, hh * ww, heads * self.head_dim)
        a = dense(c, name="to_out_0", dtype=self.dtype)(a).reshape(b, hh, ww, c)
        return (a + x) / self.scale


def _head_dim(cfg: UNet2DConfig, channels: int) -> int:
    return cfg.attention_head_dim or channels


class DownBlock(nn.Module):
    kind: str
    out_channels: int
    cfg: UNet2DConfig
    add_downsample: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, temb, train: bool = False):
        cfg, c, outs = self.cfg, self.out_channels, []
        for i in range(cfg.layers_per_block):
            h = ResnetBlock2D(c, cfg, dtype=self.dtype, name=f"resnets_{i}")(h, temb, train)
            if self.kind == "AttnDownBlock2D":
                h = Attention(_head_dim(cfg, c), cfg.norm_num_groups, cfg.norm_eps,
                              dtype=self.dtype, name=f"attentions_{i}")(h)
            outs.append(h)
        if self.add_downsample:
            resnet = self.kind == "ResnetDownsampleBlock2D" or (
                self.kind == "AttnDownBlock2D" and cfg.downsample_type == "resnet")
            if resnet:
                h = ResnetBlock2D(c, cfg, resample="down", dtype=self.dtype,
                                  name="downsamplers_0")(h, temb, train)
            else:
                h = Downsample(c, cfg.downsample_padding, dtype=self.dtype, name="downsamplers_0")(h)
            outs.append(h)
        return h, outs


class Downsample(nn.Module):
    channels: int
    padding: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        if self.padding == 0:  # diffusers pads right/bottom by one, then a valid convolution
            h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(self.channels, stride=2, padding=self.padding, name="conv", dtype=self.dtype)(h)


class Upsample(nn.Module):
    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        return conv(self.channels, padding=1, name="conv", dtype=self.dtype)(upsample_nearest(h))


class UpBlock(nn.Module):
    kind: str
    out_channels: int
    cfg: UNet2DConfig
    add_upsample: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, skips, temb, train: bool = False):
        cfg, c = self.cfg, self.out_channels
        for i in range(cfg.layers_per_block + 1):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = ResnetBlock2D(c, cfg, dtype=self.dtype, name=f"resnets_{i}")(h, temb, train)
            if self.kind == "AttnUpBlock2D":
                h = Attention(_head_dim(cfg, c), cfg.norm_num_groups, cfg.norm_eps,
                              dtype=self.dtype, name=f"attentions_{i}")(h)
        if self.add_upsample:
            resnet = self.kind == "ResnetUpsampleBlock2D" or (
                self.kind == "AttnUpBlock2D" and cfg.upsample_type == "resnet")
            if resnet:
                h = ResnetBlock2D(c, cfg, resample="up", dtype=self.dtype,
                                  name="upsamplers_0")(h, temb, train)
            else:
                h = Upsample(c, dtype=self.dtype, name="upsamplers_0")(h)
        return h


class MidBlock(nn.Module):
    cfg: UNet2DConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, temb, train: bool = False):
        cfg, c, s = self.cfg, self.cfg.block_out_channels[-1], self.cfg.mid_block_scale_factor
        h = ResnetBlock2D(c, cfg, scale=s, dtype=self.dtype, name="resnets_0")(h, temb, train)
        if cfg.add_attention:
            groups = cfg.attn_norm_num_groups or (
                cfg.norm_num_groups if cfg.resnet_time_scale_shift == "default" else None)
            h = Attention(_head_dim(cfg, c), groups, cfg.norm_eps, scale=s, dtype=self.dtype,
                          name="attentions_0")(h)
        return ResnetBlock2D(c, cfg, scale=s, dtype=self.dtype, name="resnets_1")(h, temb, train)


class UNet2D(nn.Module):
    """``apply(params, x [B,H,W,C], timesteps [B] or [], class_labels [B] | None) -> out``: the
    raw prediction (epsilon, v or the sample, as the scheduler's ``prediction_type`` says)."""
    config: UNet2DConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, timesteps, class_labels=None, train: bool = False):
        cfg, kw = self.config, dict(dtype=self.dtype)
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), x.shape[:1])
        temb = self._time_embedding(t)
        if cfg.num_class_embeds:
            if class_labels is None:
                raise ValueError("this U-Net is class-conditional (num_class_embeds="
                                 f"{cfg.num_class_embeds}): pass class labels")
            temb = temb + nn.Embed(cfg.num_class_embeds, temb.shape[-1],
                                   name="class_embedding")(class_labels)
        elif class_labels is not None:
            raise ValueError("this U-Net has no class embedding (num_class_embeds is unset) but "
                             "class labels were passed")
        h = conv(cfg.block_out_channels[0], padding=1, name="conv_in", **kw)(x.astype(self.dtype))
        skips = [h]
        n = len(cfg.block_out_channels)
        for i, kind in enumerate(cfg.down_block_types):
            h, outs = DownBlock(kind, cfg.block_out_channels[i], cfg, i < n - 1, **kw,
                                name=f"down_blocks_{i}")(h, temb, train)
            skips += outs
        if cfg.mid_block_type:
            h = MidBlock(cfg, **kw, name="mid_block")(h, temb, train)
        rev = tuple(reversed(cfg.block_out_channels))
        for i, kind in enumerate(cfg.up_block_types):
            h = UpBlock(kind, rev[i], cfg, i < n - 1, **kw, name=f"up_blocks_{i}")(
                h, skips, temb, train)
        h = group_norm(cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out")(h)
        out = conv(cfg.out_channels, padding=1, name="conv_out", **kw)(nn.silu(h))
        out = out.astype(jnp.float32)
        if cfg.time_embedding_type == "fourier":
            out = out / t[:, None, None, None]
        return out

    def _time_embedding(self, t):
        cfg, c0 = self.config, self.config.block_out_channels[0]
        if cfg.time_embedding_type == "fourier":
            e = FourierProjection(c0, name="time_proj")(t)
        elif cfg.time_embedding_type == "learned":
            e = nn.Embed(cfg.num_train_timesteps, c0, name="time_proj")(t.astype(jnp.int32))
        else:
            e = timestep_embedding(t, c0, cfg.flip_sin_to_cos, cfg.freq_shift)
        dim = cfg.time_embedding_dim or 4 * c0
        return TimeEmbedding(dim, dtype=self.dtype, name="time_embedding")(e)


class TimeEmbedding(nn.Module):
    dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, e):
        e = nn.silu(dense(self.dim, name="linear_1", dtype=self.dtype)(e))
        return dense(self.dim, name="linear_2", dtype=self.dtype)(e)
