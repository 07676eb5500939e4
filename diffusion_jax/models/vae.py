"""A convolutional VAE (Kingma & Welling 2014): encoder to a diagonal-Gaussian posterior, decoder
to a per-pixel discretized logistic likelihood over the 256 values of an 8-bit image (Salimans et
al. 2017, one component). The latent is either flat (``latent_dim > 0``: a dense bottleneck, the
generative VAE) or spatial (``latent_dim = 0``: ``S/2^L x S/2^L x latent_channels``, the
autoencoder latent diffusion trains on).

    vae = VAE(channels=1, ch=32, levels=2, latent_dim=32)
    (mean, log_scale), mu, logvar = vae.apply({"params": p}, x, eps)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import conv, dense, group_norm

LOG_SCALE_MIN = -7.0


class Encoder(nn.Module):
    ch: int
    levels: int
    latent_dim: int
    latent_channels: int

    @nn.compact
    def __call__(self, x):
        h = conv(self.ch)(x)
        width = self.ch
        for _ in range(self.levels):
            width *= 2
            h = nn.silu(group_norm(h.shape[-1], jnp.float32)(h))
            h = conv(width, kernel=4, stride=2)(h)
            h = nn.silu(group_norm(width, jnp.float32)(h))
            h = conv(width)(h)
        h = nn.silu(group_norm(width, jnp.float32)(h))
        if self.latent_dim:
            out = dense(2 * self.latent_dim)(h.reshape(h.shape[0], -1))
        else:
            out = conv(2 * self.latent_channels)(h)
        mu, logvar = jnp.split(out, 2, axis=-1)
        return mu, jnp.clip(logvar, -30.0, 20.0)


class Decoder(nn.Module):
    image_size: int
    channels: int
    ch: int
    levels: int
    latent_dim: int

    @nn.compact
    def __call__(self, z):
        base, width = self.image_size // 2 ** self.levels, self.ch * 2 ** self.levels
        if self.latent_dim:
            h = dense(base * base * width)(z).reshape(z.shape[0], base, base, width)
        else:
            h = conv(width)(z)
        for i in range(self.levels):
            h = nn.silu(group_norm(width, jnp.float32)(h))
            h = conv(width)(h)
            h = nn.silu(group_norm(width, jnp.float32)(h))
            width //= 2  # resize-convolution (a transposed conv's backward is slow on XLA:CPU)
            b, hh, ww, c = h.shape
            h = conv(width, name=f"up{i}")(jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest"))
        h = nn.silu(group_norm(width, jnp.float32)(h))
        out = conv(2 * self.channels)(h)
        mean, log_scale = jnp.split(out, 2, axis=-1)
        return jnp.tanh(mean), jnp.maximum(log_scale, LOG_SCALE_MIN)


class VAE(nn.Module):
    image_size: int
    channels: int
    ch: int = 32
    levels: int = 2
    latent_dim: int = 32        # > 0: flat latent of this size; 0: spatial latent
    latent_channels: int = 4    # the spatial latent's channels

    def setup(self):
        self.encoder = Encoder(self.ch, self.levels, self.latent_dim, self.latent_channels)
        self.decoder = Decoder(self.image_size, self.channels, self.ch, self.levels,
                               self.latent_dim)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        if self.latent_dim:
            return (self.latent_dim,)
        s = self.image_size // 2 ** self.levels
        return (s, s, self.latent_channels)

    def __call__(self, x, eps):
        """``((mean, log_scale), mu, logvar)`` with ``z = mu + exp(logvar / 2) * eps``."""
        mu, logvar = self.encoder(x)
        z = mu + jnp.exp(0.5 * logvar) * eps
        return self.decoder(z), mu, logvar

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)
