"""Glow (Kingma & Dhariwal 2018), the multi-scale normalizing flow of RealNVP (Dinh et al. 2017):
per level a squeeze, ``steps`` x [actnorm, invertible 1x1 convolution (LU-parameterised), affine
coupling], then half of the channels split off as latents (all of them at the last level).

    flow = Glow(levels=2, steps=8, hidden=64)
    zs, logdet = flow.apply({"params": p}, x)                  # x -> latents, log|det dz/dx|
    x = flow.apply({"params": p}, zs, method=Glow.reverse)    # latents -> x, exactly

``model.init(key, x)`` initialises every actnorm from the batch ``x`` (data-dependent: zero mean
and unit variance per channel of its output). Everything is exact in float32 arithmetic up to
rounding: the inverse, and the log-determinant (tested against ``jax.jacfwd``).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from diffusion_jax.models.layers import conv


def squeeze(x):
    """``[B, H, W, C] -> [B, H/2, W/2, 4C]`` (each 2x2 block to channels)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, h // 2, w // 2, c * 4)


def unsqueeze(x):
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * 2, w * 2, c // 4)


def check_flow_size(image_size: int, levels: int) -> None:
    if levels < 1 or image_size % 2 ** levels:
        raise ValueError(f"a flow with model.levels={levels} squeezes the image {levels} times: "
                         f"data.image_size={image_size} must be divisible by 2**levels="
                         f"{2 ** levels}; change model.levels")


def latent_shapes(image_shape: tuple[int, int, int], levels: int) -> list[tuple[int, int, int]]:
    """The shapes of the latents ``forward`` returns, one per level (split halves, then the rest)."""
    s, _, c = image_shape
    out = []
    for level in range(levels):
        s, c = s // 2, c * 4
        if level < levels - 1:
            out.append((s, s, c // 2))
            c //= 2
    out.append((s, s, c))
    return out


class ActNorm(nn.Module):
    """``y = (x + bias) * exp(logs)`` per channel; initialised from the first batch it sees."""

    @nn.compact
    def __call__(self, x, reverse: bool = False):
        axes = tuple(range(x.ndim - 1))
        bias = self.param("bias", lambda _: -jnp.mean(x, axis=axes))
        logs = self.param("logs", lambda _: -jnp.log(jnp.std(x, axis=axes) + 1e-6))
        logdet = math.prod(x.shape[1:-1]) * jnp.sum(logs)
        if reverse:
            return x * jnp.exp(-logs) - bias, -logdet
        return (x + bias) * jnp.exp(logs), logdet


class InvConv1x1(nn.Module):
    """``y = x W`` per pixel with ``W = P L (U + diag(sign(s) exp(log|s|)))`` (Glow's LU form: the
    log-determinant is ``H W sum(log|s|)``). ``P`` and ``sign(s)`` are fixed, computed from
    ``seed`` (a random rotation), so they are constants of the architecture, not state."""
    seed: int

    @nn.compact
    def __call__(self, x, reverse: bool = False):
        c = x.shape[-1]
        w0 = np.linalg.qr(np.random.RandomState(self.seed).randn(c, c))[0]
        p, lower, upper = scipy.linalg.lu(w0)
        s = np.diag(upper)
        lower_mask, upper_mask = np.tril(np.ones((c, c)), -1), np.triu(np.ones((c, c)), 1)
        l_p = self.param("lower", lambda _: jnp.asarray(lower * lower_mask, jnp.float32))
        u_p = self.param("upper", lambda _: jnp.asarray(upper * upper_mask, jnp.float32))
        log_s = self.param("log_s", lambda _: jnp.asarray(np.log(np.abs(s)), jnp.float32))
        w = (jnp.asarray(p, jnp.float32) @ (l_p * lower_mask + np.eye(c))
             @ (u_p * upper_mask + jnp.diag(np.sign(s) * jnp.exp(log_s))))
        logdet = math.prod(x.shape[1:-1]) * jnp.sum(log_s)
        if reverse:
            return jnp.einsum("...c,cd->...d", x, jnp.linalg.inv(w)), -logdet
        return jnp.einsum("...c,cd->...d", x, w), logdet


class AffineCoupling(nn.Module):
    """The second half of the channels shifted and scaled by a small CNN of the first half:
    ``y_b = (x_b + t(x_a)) * sigmoid(r(x_a) + 2)``; the last conv starts at zero (identity)."""
    hidden: int

    @nn.compact
    def __call__(self, x, reverse: bool = False):
        xa, xb = jnp.split(x, 2, axis=-1)
        h = nn.relu(conv(self.hidden)(xa))
        h = nn.relu(conv(self.hidden, kernel=1)(h))
        h = conv(2 * xb.shape[-1], zero=True)(h)
        shift, raw = h[..., 0::2], h[..., 1::2]
        scale = nn.sigmoid(raw + 2.0)
        logdet = jnp.sum(jnp.log(scale).reshape(x.shape[0], -1), axis=-1)
        if reverse:
            return jnp.concatenate([xa, xb / scale - shift], -1), -logdet
        return jnp.concatenate([xa, (xb + shift) * scale], -1), logdet


class Glow(nn.Module):
    levels: int = 2
    steps: int = 8
    hidden: int = 64

    def setup(self):
        n = self.levels * self.steps
        self.actnorms = [ActNorm() for _ in range(n)]
        self.invconvs = [InvConv1x1(seed=i) for i in range(n)]
        self.couplings = [AffineCoupling(self.hidden) for _ in range(n)]

    def __call__(self, x):
        """``(zs, logdet)``: the latents (``latent_shapes``) and ``log|det dz/dx|`` per image."""
        zs, logdet, h = [], jnp.zeros(x.shape[0]), x
        for level in range(self.levels):
            h = squeeze(h)
            for k in range(level * self.steps, (level + 1) * self.steps):
                for layer in (self.actnorms[k], self.invconvs[k], self.couplings[k]):
                    h, ld = layer(h)
                    logdet = logdet + ld
            if level < self.levels - 1:
                h, z = jnp.split(h, 2, axis=-1)
                zs.append(z)
        zs.append(h)
        return zs, logdet

    def reverse(self, zs):
        """The inverse of ``__call__``: latents -> images."""
        h = zs[-1]
        for level in reversed(range(self.levels)):
            if level < self.levels - 1:
                h = jnp.concatenate([h, zs[level]], axis=-1)
            for k in reversed(range(level * self.steps, (level + 1) * self.steps)):
                for layer in (self.couplings[k], self.invconvs[k], self.actnorms[k]):
                    h, _ = layer(h, reverse=True)
            h = unsqueeze(h)
        return h


def standard_normal_logp(zs):
    """``sum log N(z; 0, I)`` over every latent, per image."""
    return sum(jnp.sum((-0.5 * (z ** 2 + math.log(2 * math.pi))).reshape(z.shape[0], -1), -1)
               for z in zs)
