"""The networks of NVlabs/edm (Karras et al. 2022) as flax.linen modules, NHWC: ``SongUNet``
(DDPM++ and NCSN++, Song et al. 2021) and ``DhariwalUNet`` (ADM, Dhariwal & Nichol 2021).

Written from the architecture EDM's ``training/networks.py`` describes, with submodules named
as EDM names them (``enc_32x32_block0/conv0``: the ``enc``/``dec`` dictionaries' keys joined to
their name), so an exported ``state_dict`` maps by name (``pretrained/convert.py``). Both take
``(x, noise_labels [B], class_labels [B] ints | None)``; label ``label_dim`` (or ``None``) is
EDM's all-zero label vector. Kernels carry logical axis names (``layers.conv``/``layers.dense``).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.layers import KERNEL_AXES_CONV, attention, dense


@dataclasses.dataclass(frozen=True)
class EDMNetConfig:
    """The constructor arguments of ``SongUNet`` / ``DhariwalUNet`` (``model_type``), EDM's
    defaults for each filled in by ``edm_config``."""
    model_type: str = "SongUNet"
    img_resolution: int = 32
    in_channels: int = 3
    out_channels: int = 3
    label_dim: int = 0
    augment_dim: int = 0
    model_channels: int = 128
    channel_mult: tuple = (1, 2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: tuple = (16,)
    dropout: float = 0.10
    label_dropout: float = 0.0
    embedding_type: str = "positional"
    channel_mult_noise: int = 1
    encoder_type: str = "standard"
    decoder_type: str = "standard"
    resample_filter: tuple = (1, 1)

    @property
    def num_classes(self) -> int:
        return self.label_dim


DHARIWAL_DEFAULTS = dict(model_channels=192, channel_mult=(1, 2, 3, 4), num_blocks=3,
                         attn_resolutions=(32, 16, 8))
DHARIWAL_FIELDS = ("img_resolution", "in_channels", "out_channels", "label_dim", "augment_dim",
                   "model_channels", "channel_mult", "channel_mult_emb", "num_blocks",
                   "attn_resolutions", "dropout", "label_dropout")


def edm_config(model_type: str, **kwargs) -> EDMNetConfig:
    base = dict(DHARIWAL_DEFAULTS) if model_type == "DhariwalUNet" else {}
    base.update({k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    return EDMNetConfig(model_type=model_type, **base)


def _filter(taps) -> np.ndarray:
    f = np.asarray(taps, np.float32)
    return np.outer(f, f) / f.sum() ** 2


def _depthwise(x, f, stride, padding, lhs_dilation=1):
    c = x.shape[-1]
    k = jnp.asarray(np.tile(f[:, :, None, None], (1, 1, 1, c)), x.dtype)
    return jax.lax.conv_general_dilated(
        x, k, (stride, stride), [(padding, padding)] * 2, lhs_dilation=(lhs_dilation,) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def resample(x, taps, up: bool):
    """EDM's up/down-sampling by the separable filter ``taps`` (``[1,1]``: nearest / box)."""
    f = _filter(taps)
    pad = (f.shape[0] - 1) // 2
    if up:  # torch's conv_transpose2d(stride=2, padding=pad) of the filter times 4
        return _depthwise(x, 4 * f, 1, f.shape[0] - 1 - pad, lhs_dilation=2)
    return _depthwise(x, f, 2, pad)


class EDMConv(nn.Module):
    """EDM's ``Conv2d``: optional resampling, then an optional ``kernel``x``kernel`` conv (its
    ``kernel``/``bias`` parameters are the torch ``weight``/``bias``)."""
    out_channels: int
    kernel: int
    up: bool = False
    down: bool = False
    taps: tuple = (1, 1)
    fused: bool = False

    def _conv(self, x, padding):
        k = self.kernel
        init = nn.with_logical_partitioning(nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                                            KERNEL_AXES_CONV)
        w = self.param("kernel", init, (k, k, x.shape[-1], self.out_channels))
        b = self.param("bias", nn.initializers.zeros, (self.out_channels,))
        y = jax.lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1), [(padding, padding)] * 2,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + b.astype(x.dtype)

    @nn.compact
    def __call__(self, x):
        k, f_pad = self.kernel, (len(self.taps) - 1) // 2
        if self.fused and self.down and k:
            return _depthwise(self._conv(x, k // 2 + f_pad), _filter(self.taps), 2, 0)
        if self.up or self.down:
            x = resample(x, self.taps, self.up)
        return self._conv(x, k // 2) if k else x


def group_norm(channels: int, eps: float = 1e-5, name=None):
    return nn.GroupNorm(num_groups=min(32, channels // 4), epsilon=eps, use_fast_variance=False,
                        name=name)


class UNetBlock(nn.Module):
    out_channels: int
    up: bool = False
    down: bool = False
    heads: int = 0
    skip_scale: float = 1.0
    eps: float = 1e-5
    taps: tuple = (1, 1)
    resample_proj: bool = False
    adaptive_scale: bool = True
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, emb, train: bool = False):
        c_in, c = x.shape[-1], self.out_channels
        orig = x
        x = EDMConv(c, 3, self.up, self.down, self.taps, name="conv0")(nn.silu(group_norm(c_in, self.eps, "norm0")(x)))
        params = dense(c * (2 if self.adaptive_scale else 1), name="affine")(emb)[:, None, None, :]
        if self.adaptive_scale:
            scale, shift = jnp.split(params, 2, axis=-1)
            x = nn.silu(shift + group_norm(c, self.eps, "norm1")(x) * (scale + 1))
        else:
            x = nn.silu(group_norm(c, self.eps, "norm1")(x + params))
        x = EDMConv(c, 3, name="conv1")(nn.Dropout(self.dropout, deterministic=not train)(x))
        if c != c_in or self.up or self.down:
            k = 1 if self.resample_proj or c != c_in else 0
            orig = EDMConv(c, k, self.up, self.down, self.taps, name="skip")(orig)
        x = (x + orig) * self.skip_scale
        if self.heads:
            b, h, w, _ = x.shape
            qkv = EDMConv(3 * c, 1, name="qkv")(group_norm(c, self.eps, "norm2")(x))
            qkv = qkv.reshape(b, h * w, self.heads, c // self.heads, 3)
            a = attention(qkv[..., 0], qkv[..., 1], qkv[..., 2]).reshape(b, h, w, c)
            x = (EDMConv(c, 1, name="proj")(a) + x) * self.skip_scale
        return x


def positional_embedding(x, channels: int, endpoint: bool, max_positions: float = 10000.0):
    half = channels // 2
    freqs = jnp.arange(half, dtype=jnp.float32) / (half - (1 if endpoint else 0))
    args = x.astype(jnp.float32)[:, None] * ((1.0 / max_positions) ** freqs)[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=1)


class FourierEmbedding(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x):
        freqs = jax.lax.stop_gradient(self.param("freqs", nn.initializers.normal(16.0),
                                                 (self.channels // 2,)))
        args = x.astype(jnp.float32)[:, None] * (2 * np.pi * freqs)[None]
        return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=1)


def _labels(cfg: EDMNetConfig, y, batch: int):
    """Integer labels -> EDM's one-hot vectors (label ``label_dim`` / ``None``: all zeros)."""
    if y is None:
        return jnp.zeros((batch, cfg.label_dim), jnp.float32)
    return jax.nn.one_hot(y, cfg.label_dim, dtype=jnp.float32)


class SongUNet(nn.Module):
    config: EDMNetConfig

    @nn.compact
    def __call__(self, x, noise_labels, class_labels=None, train: bool = False):
        cfg = self.config
        emb = self._embedding(x, noise_labels, class_labels)
        blk = dict(heads=0, skip_scale=math.sqrt(0.5), eps=1e-6, taps=cfg.resample_filter,
                   resample_proj=True, adaptive_scale=False, dropout=cfg.dropout)
        x, skips, cout = self._encoder(x, emb, blk, train)
        aux, n = None, len(cfg.channel_mult)
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            res = cfg.img_resolution >> level
            r = f"{res}x{res}"
            if level == n - 1:
                x = UNetBlock(cout, **{**blk, "heads": 1}, name=f"dec_{r}_in0")(x, emb, train)
                x = UNetBlock(cout, **blk, name=f"dec_{r}_in1")(x, emb, train)
            else:
                x = UNetBlock(cout, up=True, **blk, name=f"dec_{r}_up")(x, emb, train)
            for idx in range(cfg.num_blocks + 1):
                cout = cfg.model_channels * mult
                attn = idx == cfg.num_blocks and res in cfg.attn_resolutions
                x = jnp.concatenate([x, skips.pop()], axis=-1)
                x = UNetBlock(cout, **{**blk, "heads": int(attn)}, name=f"dec_{r}_block{idx}")(
                    x, emb, train)
            if cfg.decoder_type == "skip" or level == 0:
                if cfg.decoder_type == "skip" and level < n - 1:
                    aux = EDMConv(cfg.out_channels, 0, up=True, taps=cfg.resample_filter,
                                  name=f"dec_{r}_aux_up")(aux)
                tmp = group_norm(cout, 1e-6, f"dec_{r}_aux_norm")(x)
                tmp = EDMConv(cfg.out_channels, 3, name=f"dec_{r}_aux_conv")(nn.silu(tmp))
                aux = tmp if aux is None else tmp + aux
        return aux

    def _embedding(self, x, noise_labels, class_labels):
        cfg = self.config
        noise_ch = cfg.model_channels * cfg.channel_mult_noise
        emb_ch = cfg.model_channels * cfg.channel_mult_emb
        noise_labels = jnp.broadcast_to(noise_labels.reshape(-1), x.shape[:1])
        if cfg.embedding_type == "positional":
            emb = positional_embedding(noise_labels, noise_ch, endpoint=True)
        else:
            emb = FourierEmbedding(noise_ch, name="map_noise")(noise_labels)
        emb = jnp.concatenate(jnp.split(emb, 2, axis=1)[::-1], axis=1)  # swap sin/cos
        if cfg.label_dim:
            emb = emb + dense(noise_ch, name="map_label")(
                _labels(cfg, class_labels, x.shape[0]) * math.sqrt(cfg.label_dim))
        emb = nn.silu(dense(emb_ch, name="map_layer0")(emb))
        return nn.silu(dense(emb_ch, name="map_layer1")(emb))

    def _encoder(self, x, emb, blk, train):
        cfg = self.config
        skips, aux, cout = [], x, cfg.in_channels
        for level, mult in enumerate(cfg.channel_mult):
            r = f"{cfg.img_resolution >> level}x{cfg.img_resolution >> level}"
            if level == 0:
                cout = cfg.model_channels
                x = EDMConv(cout, 3, name=f"enc_{r}_conv")(x)
                skips.append(x)
            else:
                x = UNetBlock(cout, down=True, **blk, name=f"enc_{r}_down")(x, emb, train)
                skips.append(x)
                if cfg.encoder_type == "skip":
                    aux = EDMConv(aux.shape[-1], 0, down=True, taps=cfg.resample_filter,
                                  name=f"enc_{r}_aux_down")(aux)
                    x = skips[-1] = x + EDMConv(cout, 1, name=f"enc_{r}_aux_skip")(aux)
                if cfg.encoder_type == "residual":
                    res = EDMConv(cout, 3, down=True, taps=cfg.resample_filter, fused=True,
                                  name=f"enc_{r}_aux_residual")(aux)
                    x = skips[-1] = aux = (x + res) / math.sqrt(2)
            for idx in range(cfg.num_blocks):
                cout = cfg.model_channels * mult
                attn = (cfg.img_resolution >> level) in cfg.attn_resolutions
                x = UNetBlock(cout, **{**blk, "heads": int(attn)}, name=f"enc_{r}_block{idx}")(
                    x, emb, train)
                skips.append(x)
        return x, skips, cout


class DhariwalUNet(nn.Module):
    config: EDMNetConfig

    @nn.compact
    def __call__(self, x, noise_labels, class_labels=None, train: bool = False):
        cfg = self.config
        emb_ch = cfg.model_channels * cfg.channel_mult_emb
        noise_labels = jnp.broadcast_to(noise_labels.reshape(-1), x.shape[:1])
        emb = positional_embedding(noise_labels, cfg.model_channels, endpoint=False)
        emb = dense(emb_ch, name="map_layer1")(nn.silu(dense(emb_ch, name="map_layer0")(emb)))
        if cfg.label_dim:
            emb = emb + dense(emb_ch, name="map_label", use_bias=False)(
                _labels(cfg, class_labels, x.shape[0]))
        emb = nn.silu(emb)
        blk = dict(dropout=cfg.dropout)
        heads = lambda c, on: c // 64 if on else 0
        skips, cout = [], cfg.in_channels
        for level, mult in enumerate(cfg.channel_mult):
            res = cfg.img_resolution >> level
            r = f"{res}x{res}"
            if level == 0:
                cout = cfg.model_channels * mult
                x = EDMConv(cout, 3, name=f"enc_{r}_conv")(x)
            else:
                x = UNetBlock(cout, down=True, **blk, name=f"enc_{r}_down")(x, emb, train)
            skips.append(x)
            for idx in range(cfg.num_blocks):
                cout = cfg.model_channels * mult
                x = UNetBlock(cout, heads=heads(cout, res in cfg.attn_resolutions), **blk,
                              name=f"enc_{r}_block{idx}")(x, emb, train)
                skips.append(x)
        n = len(cfg.channel_mult)
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            res = cfg.img_resolution >> level
            r = f"{res}x{res}"
            if level == n - 1:
                x = UNetBlock(cout, heads=heads(cout, True), **blk, name=f"dec_{r}_in0")(x, emb, train)
                x = UNetBlock(cout, **blk, name=f"dec_{r}_in1")(x, emb, train)
            else:
                x = UNetBlock(cout, up=True, **blk, name=f"dec_{r}_up")(x, emb, train)
            for idx in range(cfg.num_blocks + 1):
                cout = cfg.model_channels * mult
                x = jnp.concatenate([x, skips.pop()], axis=-1)
                x = UNetBlock(cout, heads=heads(cout, res in cfg.attn_resolutions), **blk,
                              name=f"dec_{r}_block{idx}")(x, emb, train)
        x = nn.silu(group_norm(cout, name="out_norm")(x))
        return EDMConv(cfg.out_channels, 3, name="out_conv")(x)


EDM_NETWORKS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
