"""The DDPM/ADM-family U-Net as a pure flax.linen module:
``apply(params, x, t, y=None, context=None, low_res=None) -> out``.

Conditioning, each switched on by a field of ``UNetConfig``:

* ``num_classes > 0``: class labels ``y [B]`` through an embedding added to the time embedding;
  label ``num_classes`` is the null class (classifier-free guidance's unconditional half);
* ``context_dim > 0``: a sequence ``context [B, L, context_dim]`` through cross-attention at the
  attention resolutions and in the middle block;
* ``low_res_size > 0``: a low-resolution image ``low_res [B, s, s, C]`` upsampled (bilinear) to the
  output size and concatenated to the input channels (super-resolution, Saharia et al. 2022).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import (AttnBlock, CrossAttnBlock, ResBlock, conv, dense, group_norm,
                                        remat_policy, time_columns, timestep_embedding)


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
    context_dim: int = 0          # > 0: cross-attention to ``context [B, L, context_dim]``
    low_res_size: int = 0         # > 0: concatenate an upsampled ``low_res [B, s, s, C]`` input
    remat: str = "none"           # none | full | dots: recompute each res/attention block's
                                  # activations in the backward pass (layers.REMAT_POLICIES)


def check_image_size(size: int, channel_mult) -> None:
    factor = 2 ** (len(channel_mult) - 1)
    if size % factor:
        raise ValueError(f"image_size {size} is not divisible by 2**{len(channel_mult) - 1} "
                         f"({len(channel_mult) - 1} downsamplings from channel_mult "
                         f"{tuple(channel_mult)}); pick a size divisible by {factor}")


def time_embedding(t, scale: float, channels: int, emb_dim: int, kw: dict):
    """The sinusoidal embedding of ``scale * t`` through a 2-layer MLP (call inside a compact
    module); ``t [B, k]`` (MeanFlow's ``(t, t - r)``): one MLP per column, summed. The first
    column's layers keep the auto names ``Dense_0``/``Dense_1`` (checkpoints agree)."""
    emb = 0.0
    for j, tj in enumerate(time_columns(t)):
        name = (None, None) if j == 0 else (f"time{j}_in", f"time{j}_out")
        e = dense(emb_dim, name=name[0], **kw)(timestep_embedding(scale * tj, channels))
        emb = emb + dense(emb_dim, name=name[1], **kw)(nn.silu(e))
    return emb


class UNet(nn.Module):
    config: UNetConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, y=None, train: bool = False, context=None, low_res=None):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        check_image_size(x.shape[1], cfg.channel_mult)
        check_conditioning(cfg, x, y, context, low_res)
        if cfg.low_res_size:
            up = jax.image.resize(low_res.astype(x.dtype), x.shape[:3] + low_res.shape[3:],
                                  "bilinear")
            x = jnp.concatenate([x, up], axis=-1)
        attend = lambda h: h if context is None else CrossAttnBlock(cfg.num_heads, **kw)(h, context)
        emb_dim = 4 * cfg.channels
        emb = time_embedding(t, cfg.time_scale, cfg.channels, emb_dim, kw)
        if cfg.num_classes:
            y = jnp.full(x.shape[:1], cfg.num_classes) if y is None else y
            emb = emb + nn.Embed(cfg.num_classes + 1, emb_dim, param_dtype=self.param_dtype)(y)
        res_cls, attn_cls = ResBlock, AttnBlock
        if cfg.remat != "none":  # the same parameter names as without remat (checkpoints agree)
            policy = remat_policy(cfg.remat)
            res_cls = nn.remat(ResBlock, policy=policy, static_argnums=(3,))
            attn_cls = nn.remat(AttnBlock, policy=policy)
        count = {"res": 0, "attn": 0}

        def block(f):
            count["res"] += 1
            return res_cls(f, cfg.dropout, **kw, name=f"ResBlock_{count['res'] - 1}")

        def AttnBlock_(heads, **kw_):  # noqa: N802
            count["attn"] += 1
            return attn_cls(heads, **kw_, name=f"AttnBlock_{count['attn'] - 1}")

        h = conv(cfg.channels, **kw)(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                h = block(cfg.channels * mult)(h, emb, train)
                if h.shape[1] in cfg.attn_resolutions:
                    h = attend(AttnBlock_(cfg.num_heads, **kw)(h))
                skips.append(h)
            if level < len(cfg.channel_mult) - 1:
                h = conv(h.shape[-1], stride=2, **kw)(h)
                skips.append(h)
        h = block(h.shape[-1])(h, emb, train)
        h = attend(AttnBlock_(cfg.num_heads, **kw)(h))
        h = block(h.shape[-1])(h, emb, train)
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                h = block(cfg.channels * mult)(jnp.concatenate([h, skips.pop()], -1), emb, train)
                if h.shape[1] in cfg.attn_resolutions:
                    h = attend(AttnBlock_(cfg.num_heads, **kw)(h))
            if level > 0:
                b, hh, ww, c = h.shape
                h = jax_resize(h, (b, 2 * hh, 2 * ww, c))
                h = conv(c, **kw)(h)
        h = nn.silu(group_norm(h.shape[-1], self.dtype)(h))
        out_ch = cfg.out_channels or x.shape[-1] - (low_res.shape[-1] if cfg.low_res_size else 0)
        out = conv(out_ch, zero=True, **kw)(h)
        return out.astype(jnp.float32)


def check_conditioning(cfg: UNetConfig, x, y, context, low_res) -> None:
    """Shape and presence checks on the conditioning inputs; they run while tracing, so a bad
    input fails before anything is compiled."""
    if y is not None and not cfg.num_classes:
        raise ValueError("this U-Net has no class conditioning (num_classes=0) but labels were "
                         "passed; train a class-conditional model (--config.model.conditional=True)"
                         " or drop the labels / guidance")
    if context is None and cfg.context_dim:
        raise ValueError(f"this U-Net cross-attends to a context [B, L, {cfg.context_dim}]; pass "
                         "context=... (an all-zero context is the null condition)")
    if context is not None:
        if not cfg.context_dim:
            raise ValueError("this U-Net has no cross-attention (context_dim=0) but a context was "
                             "passed; set model.context_dim to the embedding width")
        if context.ndim != 3 or context.shape[-1] != cfg.context_dim or context.shape[0] != x.shape[0]:
            raise ValueError(f"context must be [B={x.shape[0]}, L, {cfg.context_dim}], got shape "
                             f"{tuple(context.shape)}; the model was built with context_dim="
                             f"{cfg.context_dim}")
    if cfg.low_res_size:
        want = (x.shape[0], cfg.low_res_size, cfg.low_res_size)
        if low_res is None or tuple(low_res.shape[:3]) != want:
            got = None if low_res is None else tuple(low_res.shape)
            raise ValueError(f"this is a super-resolution U-Net: pass low_res of shape "
                             f"[{want[0]}, {want[1]}, {want[2]}, C], got {got}")
    elif low_res is not None:
        raise ValueError("this U-Net is not a super-resolution model (low_res_size=0) but low_res "
                         "was passed")


def jax_resize(h, shape):
    return jnp.repeat(jnp.repeat(h, shape[1] // h.shape[1], axis=1), shape[2] // h.shape[2], axis=2)
