"""Spherical interpolation between latents (Shoemake 1985; White 2016 for generative models):
the path keeps the norm a Gaussian latent typically has, where a straight line passes through
improbably short latents."""

from __future__ import annotations

import jax.numpy as jnp


def slerp(a, b, t):
    """Rows ``a``, ``b`` ``[B, ...]`` and fractions ``t [T]`` -> ``[B, T, ...]`` on the great circle
    from ``a`` to ``b`` (straight-line interpolation where the two are nearly parallel)."""
    fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    cos = jnp.sum(fa * fb, -1) / (jnp.linalg.norm(fa, axis=-1) * jnp.linalg.norm(fb, axis=-1))
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))[:, None, None]
    t = jnp.asarray(t)[None, :, None]
    sin = jnp.sin(omega)
    safe = sin > 1e-6
    wa = jnp.where(safe, jnp.sin((1 - t) * omega) / jnp.where(safe, sin, 1.0), 1 - t)
    wb = jnp.where(safe, jnp.sin(t * omega) / jnp.where(safe, sin, 1.0), t)
    out = wa * fa[:, None] + wb * fb[:, None]
    return out.reshape((a.shape[0], t.shape[1]) + a.shape[1:])
