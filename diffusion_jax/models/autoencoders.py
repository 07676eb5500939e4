"""The latent autoencoders of diffusers' latent pipelines, NHWC: ``AutoencoderKL`` (Stable
Diffusion's VAE, ``stabilityai/sd-vae-ft-ema``/``-mse``, DiT's) and ``VQModel`` (the
vector-quantised autoencoder of ``CompVis/ldm-celebahq-256``).

Both are an ``Encoder`` (conv_in, ``DownEncoderBlock2D``s, a mid block with one spatial
attention, norm, SiLU, conv_out) and a ``Decoder`` (conv_in, mid block, ``UpDecoderBlock2D``s,
norm, SiLU, conv_out) around 1x1 ``quant_conv``/``post_quant_conv``; the VQ model snaps the
latent to its nearest codebook vector before decoding. Submodules are named as the torch tree
is (``encoder/down_blocks_0/resnets_1/conv1``), so a safetensors file maps on by name.

    ae = AutoencoderKL(AutoencoderConfig(...))
    mean = ae.apply({"params": p}, images, method=AutoencoderKL.encode)   # the posterior mean
    images = ae.apply({"params": p}, latents, method=AutoencoderKL.decode)

Latents here are the autoencoder's own (unscaled); ``scaling_factor``/``shift_factor`` are
applied by the pipeline (``pretrained/latent_pipeline.py``), as diffusers' pipelines do.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import conv
from diffusion_jax.models.unet2d import (ACTIVATIONS, Downsample, MidBlock, ResnetBlock2D,
                                         UNet2DConfig, Upsample, group_norm)

ENCODER_BLOCKS = ("DownEncoderBlock2D",)
DECODER_BLOCKS = ("UpDecoderBlock2D",)


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """The fields of a diffusers ``AutoencoderKL`` / ``VQModel`` ``config.json``."""
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",)
    up_block_types: tuple = ("UpDecoderBlock2D",)
    block_out_channels: tuple = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    force_upcast: bool = True
    # VQModel only
    num_vq_embeddings: int = 256
    vq_embed_dim: int | None = None
    norm_type: str = "group"
    lookup_from_codebook: bool = False

    @property
    def factor(self) -> int:
        """Pixels per latent along each side."""
        return 2 ** (len(self.block_out_channels) - 1)

    def problems(self) -> list[str]:
        out = [f"down_block_types has {b!r} (supported: {', '.join(ENCODER_BLOCKS)})"
               for b in self.down_block_types if b not in ENCODER_BLOCKS]
        out += [f"up_block_types has {b!r} (supported: {', '.join(DECODER_BLOCKS)})"
                for b in self.up_block_types if b not in DECODER_BLOCKS]
        if self.act_fn not in ACTIVATIONS:
            out.append(f"act_fn={self.act_fn!r} (supported: {', '.join(ACTIVATIONS)})")
        if self.norm_type != "group":
            out.append(f"norm_type={self.norm_type!r} (supported: group)")
        if not len(self.down_block_types) == len(self.up_block_types) == len(self.block_out_channels):
            out.append(f"{len(self.block_out_channels)} block_out_channels but "
                       f"{len(self.down_block_types)} down and {len(self.up_block_types)} up "
                       "blocks (they must be equal)")
        return out

    def blocks(self) -> UNet2DConfig:
        """The shared blocks' settings (resnets without a time input, eps 1e-6, one-head
        attention over the deepest width)."""
        return UNet2DConfig(block_out_channels=tuple(self.block_out_channels),
                            norm_num_groups=self.norm_num_groups, norm_eps=1e-6,
                            act_fn=self.act_fn, attention_head_dim=self.block_out_channels[-1],
                            add_attention=self.mid_block_add_attention)


class DownEncoderBlock(nn.Module):
    out_channels: int
    cfg: UNet2DConfig
    layers: int
    add_downsample: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        for i in range(self.layers):
            h = ResnetBlock2D(self.out_channels, self.cfg, dtype=self.dtype, name=f"resnets_{i}")(h, None)
        if self.add_downsample:
            h = Downsample(self.out_channels, 0, dtype=self.dtype, name="downsamplers_0")(h)
        return h


class UpDecoderBlock(nn.Module):
    out_channels: int
    cfg: UNet2DConfig
    layers: int
    add_upsample: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        for i in range(self.layers):
            h = ResnetBlock2D(self.out_channels, self.cfg, dtype=self.dtype, name=f"resnets_{i}")(h, None)
        if self.add_upsample:
            h = Upsample(self.out_channels, dtype=self.dtype, name="upsamplers_0")(h)
        return h


class Encoder(nn.Module):
    config: AutoencoderConfig
    double_z: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg, blocks, kw = self.config, self.config.blocks(), dict(dtype=self.dtype)
        h = conv(cfg.block_out_channels[0], padding=1, name="conv_in", **kw)(x)
        n = len(cfg.block_out_channels)
        for i, c in enumerate(cfg.block_out_channels):
            h = DownEncoderBlock(c, blocks, cfg.layers_per_block, i < n - 1, **kw,
                                 name=f"down_blocks_{i}")(h)
        h = MidBlock(blocks, **kw, name="mid_block")(h, None)
        h = ACTIVATIONS[cfg.act_fn](group_norm(cfg.norm_num_groups, 1e-6, "conv_norm_out")(h))
        out = cfg.latent_channels * (2 if self.double_z else 1)
        return conv(out, padding=1, name="conv_out", **kw)(h)


class Decoder(nn.Module):
    config: AutoencoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        cfg, blocks, kw = self.config, self.config.blocks(), dict(dtype=self.dtype)
        rev = tuple(reversed(cfg.block_out_channels))
        h = conv(rev[0], padding=1, name="conv_in", **kw)(z)
        h = MidBlock(blocks, **kw, name="mid_block")(h, None)
        for i, c in enumerate(rev):
            h = UpDecoderBlock(c, blocks, cfg.layers_per_block + 1, i < len(rev) - 1, **kw,
                               name=f"up_blocks_{i}")(h)
        h = ACTIVATIONS[cfg.act_fn](group_norm(cfg.norm_num_groups, 1e-6, "conv_norm_out")(h))
        return conv(cfg.out_channels, padding=1, name="conv_out", **kw)(h)


def _conv1x1(features, name, dtype):
    return conv(features, kernel=1, padding=0, name=name, dtype=dtype)


class AutoencoderKL(nn.Module):
    """``encode(x) -> (mean, logvar)`` of the diagonal Gaussian posterior; ``decode(z) -> x``;
    ``__call__(x) -> decode(mean)``. Images NHWC in [-1, 1]."""
    config: AutoencoderConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg, dtype=self.dtype)
        self.decoder = Decoder(cfg, dtype=self.dtype)
        if cfg.use_quant_conv:
            self.quant_conv = _conv1x1(2 * cfg.latent_channels, "quant_conv", self.dtype)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = _conv1x1(cfg.latent_channels, "post_quant_conv", self.dtype)

    def encode(self, x):
        h = self.encoder(x.astype(self.dtype))
        if self.config.use_quant_conv:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z):
        z = z.astype(self.dtype)
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x):
        return self.decode(self.encode(x)[0])


class VQModel(nn.Module):
    """``encode(x) -> h`` (before quantisation, as diffusers' ``VQModel.encode``);
    ``decode(h) -> x`` snaps ``h`` to the nearest codebook vectors first."""
    config: AutoencoderConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        cfg = self.config
        dim = cfg.vq_embed_dim or cfg.latent_channels
        self.encoder = Encoder(cfg, double_z=False, dtype=self.dtype)
        self.decoder = Decoder(cfg, dtype=self.dtype)
        self.quant_conv = _conv1x1(dim, "quant_conv", self.dtype)
        self.post_quant_conv = _conv1x1(cfg.latent_channels, "post_quant_conv", self.dtype)
        self.quantize = Codebook(cfg.num_vq_embeddings, dim)

    def encode(self, x):
        return self.quant_conv(self.encoder(x.astype(self.dtype))).astype(jnp.float32)

    def decode(self, h):
        q = self.quantize(h.astype(jnp.float32))
        return self.decoder(self.post_quant_conv(q.astype(self.dtype))).astype(jnp.float32)

    def __call__(self, x):
        return self.decode(self.encode(x))


class Codebook(nn.Module):
    """The nearest of ``n`` code vectors (by Euclidean distance) for every latent position."""
    n: int
    dim: int

    @nn.compact
    def __call__(self, h):
        e = nn.Embed(self.n, self.dim, name="embedding").embedding
        flat = h.reshape(-1, self.dim)
        d = (jnp.sum(flat ** 2, 1, keepdims=True) + jnp.sum(e ** 2, 1)[None]
             - 2 * flat @ e.T)
        return e[jnp.argmin(d, axis=1)].reshape(h.shape)
