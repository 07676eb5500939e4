"""DDPM ancestral sampling and DDIM (Ho et al. 2020, Alg. 2; Song et al. 2021a, eq. 12)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from diffusion_jax.samplers.base import Carry, Sampler, coeffs, eps_hat


def _ddim_update(ctx, x, t, t_next, key, noise_var_fn):
    """``x_t = alpha_t x0 + sqrt(sigma_t^2 e^{-2h}) eps + c z`` with ``c^2 = noise_var_fn(...)``.

    The mean is the posterior mean ``q(x_t | x_s, x0_hat)`` for every choice of ``c``
    (written with ``h = lambda_t - lambda_s`` so that it holds for any process, not just VP).
    """
    a_s, s_s, l_s = coeffs(ctx.process, t)
    a_t, s_t, l_t = coeffs(ctx.process, t_next)
    x0, eps = eps_hat(ctx, x, t)
    h = l_t - l_s
    c2 = noise_var_fn(s_s, s_t, h)
    x_new = a_t * x0 + jnp.sqrt(jnp.maximum(s_t**2 - c2, 0.0)) * eps
    if key is not None:
        x_new = x_new + jnp.sqrt(c2) * jax.random.normal(key, x.shape, x.dtype)
    return x_new


@dataclasses.dataclass(frozen=True)
class DDIM(Sampler):
    """DDIM with ``eta`` (0: deterministic, the first-order PF-ODE solver; 1: DDPM posterior
    variance). Noise std ``eta * sigma_t * sqrt(1 - e^{-2h})`` (Song et al. 2021a, eq. 16)."""

    eta: float = 0.0
    nonnegative = ("eta",)

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step(self, ctx, carry, i, t, t_next, key):
        var = lambda s_s, s_t, h: (self.eta * s_t) ** 2 * -jnp.expm1(-2.0 * h)
        return Carry(_ddim_update(ctx, carry.x, t, t_next, key if self.eta > 0 else None, var))


@dataclasses.dataclass(frozen=True)
class DDPM(Sampler):
    """Ancestral sampling from ``q(x_t | x_s, x0_hat)`` (Ho et al. 2020, Alg. 2).

    ``variance='small'``: the posterior variance ``beta_tilde``; ``'large'``: the forward
    transition variance ``beta`` (``sigma_s^2 (1 - e^{-2h})`` for a general process)."""

    variance: Literal["small", "large"] = "small"
    stochastic = True

    def validate(self):
        if self.variance not in ("small", "large"):
            raise ValueError(f"DDPM variance must be 'small' or 'large', got {self.variance!r}")

    def step(self, ctx, carry, i, t, t_next, key):
        big = self.variance == "large"
        var = lambda s_s, s_t, h: (s_s if big else s_t) ** 2 * -jnp.expm1(-2.0 * h)
        return Carry(_ddim_update(ctx, carry.x, t, t_next, key, var))
