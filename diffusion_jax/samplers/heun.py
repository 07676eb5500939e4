"""Euler and Heun samplers of EDM (Karras et al. 2022, Alg. 2), with stochastic churn.

They integrate the PF-ODE in EDM's scaled variables ``x~ = x / alpha`` and
``s = sigma / alpha``, where it reads ``dx~/ds = (x~ - D(x~ alpha, t(s))) / s`` for every process.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from diffusion_jax.samplers.base import Carry, Sampler, coeffs


@dataclasses.dataclass(frozen=True)
class Euler(Sampler):
    """Euler in ``s = sigma/alpha`` (= DDIM when ``s_churn = 0``). ``s_churn``, ``s_tmin``,
    ``s_tmax``, ``s_noise`` are EDM's churn parameters, with ``s_tmin/s_tmax`` in units of ``s``."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    nonnegative = ("s_churn", "s_noise")
    second_order = False

    @property
    def stochastic(self) -> bool:
        return self.s_churn > 0

    @property
    def nfe_per_step(self) -> int:
        return 2 if self.second_order else 1

    def step(self, ctx, carry, i, t, t_next, key):
        p = ctx.process
        a_s, s_s, _ = coeffs(p, t)
        a_t, s_t, _ = coeffs(p, t_next)
        x = carry.x / a_s
        s, s_next = s_s / a_s, s_t / a_t
        if self.s_churn > 0:  # static hyper-parameter: no churn, no extra work
            in_range = (s >= self.s_tmin) & (s <= self.s_tmax)
            gamma = jnp.where(in_range, min(self.s_churn / ctx.num_steps, math.sqrt(2) - 1), 0.0)
            s_max = p.sigma(p.t_max) / p.alpha(p.t_max)
            s_hat = jnp.minimum(s * (1 + gamma), s_max)
            z = jax.random.normal(key, x.shape, x.dtype)
            x = x + jnp.sqrt(jnp.maximum(s_hat**2 - s**2, 0.0)) * self.s_noise * z
            t = jnp.where(s_hat > s, p.t_of_logsnr(-2.0 * jnp.log(s_hat)), t)
            s = s_hat
        d = (x - ctx.denoise(p.alpha(t) * x, t)) / s
        x_next = x + (s_next - s) * d
        if self.second_order:
            d2 = (x_next - ctx.denoise(a_t * x_next, t_next)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        return Carry(a_t * x_next)


@dataclasses.dataclass(frozen=True)
class Heun(Euler):
    """EDM's deterministic (``s_churn=0``) or stochastic 2nd-order sampler, 2 NFE per step; the
    driver's final denoising step is EDM's Euler step to ``sigma = 0``."""

    second_order = True
