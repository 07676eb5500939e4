"""The DDPM/ADM-family U-Net as a pure flax.linen module: ``apply(params, x, t, y) -> out``."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import AttnBlock, ResBlock, conv, dense, group_norm, timestep_embedding


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (7,)
    num_heads: int = 1
    dropout: float = 0.0
    num_classes: int = 0          # > 0: class-conditional, label ``num_classes`` is the null class
    time_scale: float = 1000.0    # the network sees ``time_scale * t`` (or ``* c_noise``)
    out_channels: int | None = None


def check_image_size(size: int, channel_mult) -> None:
    factor = 2 ** (len(channel_mult) - 1)
    if size % factor:
        raise ValueError(f"image_size {size} is not divisible by 2**{len(channel_mult) - 1} "
                         f"({len(channel_mult) - 1} downsamplings from channel_mult "
                         f"{tuple(channel_mult)}); pick a size divisible by {factor}")


class UNet(nn.Module):
    config: UNetConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, y=None, train: bool = False):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        check_image_size(x.shape[1], cfg.channel_mult)
        emb_dim = 4 * cfg.channels
        emb = timestep_embedding(cfg.time_scale * t, cfg.channels)
        emb = dense(emb_dim, **kw)(emb)
        emb = dense(emb_dim, **kw)(nn.silu(emb))
        if cfg.num_classes:
            y = jnp.full(x.shape[:1], cfg.num_classes) if y is None else y
            emb = emb + nn.Embed(cfg.num_classes + 1, emb_dim, param_dtype=self.param_dtype)(y)
        block = lambda f: ResBlock(f, cfg.dropout, **kw)
        h = conv(cfg.channels, **kw)(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                h = block(cfg.channels * mult)(h, emb, train)
                if h.shape[1] in cfg.attn_resolutions:
                    h = AttnBlock(cfg.num_heads, **kw)(h)
                skips.append(h)
            if level < len(cfg.channel_mult) - 1:
                h = conv(h.shape[-1], stride=2, **kw)(h)
                skips.append(h)
        h = block(h.shape[-1])(h, emb, train)
        h = AttnBlock(cfg.num_heads, **kw)(h)
        h = block(h.shape[-1])(h, emb, train)
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                h = block(cfg.channels * mult)(jnp.concatenate([h, skips.pop()], -1), emb, train)
                if h.shape[1] in cfg.attn_resolutions:
                    h = AttnBlock(cfg.num_heads, **kw)(h)
            if level > 0:
                b, hh, ww, c = h.shape
                h = jax_resize(h, (b, 2 * hh, 2 * ww, c))
                h = conv(c, **kw)(h)
        h = nn.silu(group_norm(h.shape[-1], self.dtype)(h))
        out = conv(cfg.out_channels or x.shape[-1], zero=True, **kw)(h)
        return out.astype(jnp.float32)


def jax_resize(h, shape):
    return jnp.repeat(jnp.repeat(h, shape[1] // h.shape[1], axis=1), shape[2] // h.shape[2], axis=2)
