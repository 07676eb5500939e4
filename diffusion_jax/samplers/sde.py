"""Stochastic samplers of the reverse-time SDE (Song et al. 2021b):
``dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dW_bar``.

* ``EulerMaruyama``: the SDE discretised in ``t``;
* ``ReverseDiffusion``: the ancestral-like predictor of Song et al. (eq. 46), with ``f`` and ``G``
  taken from the exact forward transition between grid points, so it holds for any process;
* ``PredictorCorrector``: either predictor, preceded at each time by ``n_corrector`` Langevin
  steps with signal-to-noise ratio ``snr`` (Song et al. 2021b, Alg. 4/5);
* ``AnnealedLangevin``: NCSN's annealed Langevin dynamics (Song & Ermon 2019, Alg. 1).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from diffusion_jax.samplers.base import Carry, Sampler, coeffs, per_example_norm, score


def _em_step(ctx, x, t, t_next, key):
    p = ctx.process
    dt = t - t_next  # > 0: the reverse SDE runs backwards in time
    drift = p.f(t) * x - p.g2(t) * score(ctx, x, t)
    z = jax.random.normal(key, x.shape, x.dtype)
    return x - drift * dt + jnp.sqrt(p.g2(t) * dt) * z


def _reverse_diffusion_step(ctx, x, t, t_next, key):
    a_s, s_s, _ = coeffs(ctx.process, t)
    a_t, s_t, _ = coeffs(ctx.process, t_next)
    ratio = a_s / a_t  # forward transition x_s = ratio x_t + G z
    g2 = s_s**2 - (ratio * s_t) ** 2
    z = jax.random.normal(key, x.shape, x.dtype)
    return x - (ratio - 1.0) * x + g2 * score(ctx, x, t) + jnp.sqrt(g2) * z


def langevin(ctx, x, t, key, n_steps: int, step_size_fn):
    """``n_steps`` of ``x += eps grad + sqrt(2 eps) z`` with ``eps = step_size_fn(grad, z)``."""

    def body(j, x):
        k = jax.random.fold_in(key, j)
        grad = score(ctx, x, t)
        z = jax.random.normal(k, x.shape, x.dtype)
        eps = step_size_fn(grad, z)
        return x + eps * grad + jnp.sqrt(2.0 * eps) * z

    return jax.lax.fori_loop(0, n_steps, body, x)


@dataclasses.dataclass(frozen=True)
class EulerMaruyama(Sampler):
    stochastic = True

    def step(self, ctx, carry, i, t, t_next, key):
        return Carry(_em_step(ctx, carry.x, t, t_next, key))


@dataclasses.dataclass(frozen=True)
class ReverseDiffusion(Sampler):
    stochastic = True

    def step(self, ctx, carry, i, t, t_next, key):
        return Carry(_reverse_diffusion_step(ctx, carry.x, t, t_next, key))


@dataclasses.dataclass(frozen=True)
class PredictorCorrector(Sampler):
    """Langevin corrector at ``t`` then a predictor step to ``t_next``. Corrector step size
    ``eps = 2 a (snr |z| / |grad|)^2`` with ``a = (alpha_s/alpha_t)^2`` (``1 - beta`` of the step
    for VP, 1 for VE), as in Song et al.'s Alg. 5; the norms are per-example norms averaged over
    the batch (as in their code): per-example ratios explode in low dimension."""

    predictor: Literal["reverse_diffusion", "euler_maruyama"] = "reverse_diffusion"
    snr: float = 0.16
    n_corrector: int = 1
    stochastic = True
    nonnegative = ("snr",)

    def validate(self):
        super().validate()
        if self.predictor not in ("reverse_diffusion", "euler_maruyama"):
            raise ValueError(f"predictor must be 'reverse_diffusion' or 'euler_maruyama', "
                             f"got {self.predictor!r}")
        if self.n_corrector < 0:
            raise ValueError(f"n_corrector must be >= 0, got {self.n_corrector}")

    @property
    def nfe_per_step(self) -> int:
        return 1 + self.n_corrector

    def step(self, ctx, carry, i, t, t_next, key):
        k_c, k_p = jax.random.split(key)
        a = (ctx.process.alpha(t) / ctx.process.alpha(t_next)) ** 2

        def step_size(grad, z):
            ratio = jnp.mean(per_example_norm(z)) / jnp.mean(per_example_norm(grad))
            return 2.0 * a * (self.snr * ratio) ** 2

        x = langevin(ctx, carry.x, t, k_c, self.n_corrector, step_size)
        pred = _reverse_diffusion_step if self.predictor == "reverse_diffusion" else _em_step
        return Carry(pred(ctx, x, t, t_next, k_p))


@dataclasses.dataclass(frozen=True)
class AnnealedLangevin(Sampler):
    """Annealed Langevin dynamics: ``n_steps_each`` Langevin steps at every grid time with step
    ``step_size * sigma(t)^2``, then ``x`` is rescaled by ``alpha_t/alpha_s`` (1 for VE) to the
    next level. NCSN's ``eps * sigma_i^2 / sigma_L^2`` is ``step_size = eps / sigma_L^2``
    (their ``eps = 2e-5``, ``sigma_L = 0.01`` give the default 0.2); stable for ``step_size < 1``."""

    n_steps_each: int = 5
    step_size: float = 0.2
    stochastic = True
    nonnegative = ("step_size",)

    @property
    def nfe_per_step(self) -> int:
        return self.n_steps_each

    def step(self, ctx, carry, i, t, t_next, key):
        p = ctx.process
        a_s, s_s, _ = coeffs(p, t)
        a_t, _, _ = coeffs(p, t_next)
        eps = self.step_size * s_s**2
        x = langevin(ctx, carry.x, t, key, self.n_steps_each, lambda g, z: eps)
        return Carry(x * (a_t / a_s))
