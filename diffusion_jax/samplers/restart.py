"""Restart sampling (Xu et al. 2023): Heun steps of the probability-flow ODE down the grid, and,
at the low end of a restart interval ``[rho_min, rho_max]`` (``rho = sigma / alpha``, EDM's
sigma), ``restarts`` times: add forward-process noise back up to ``rho_max`` and re-solve the ODE
down to the same point with ``restart_steps`` Heun steps. The added noise contracts the error the
ODE steps accumulated (the paper's Theorem 2) while the ODE keeps the discretisation error small:
SDE-like sample quality at ODE-like step counts.

The restart cycles are part of the grid the one scan runs over (``expand_grid``): a pair
``t -> t_next`` with ``t_next > t`` is a noise injection (no network call, a ``lax.cond`` branch),
every other pair a Heun step (2 NFE). ``nfe`` counts every network call of the expanded grid.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers.base import Carry, Sampler, coeffs
from diffusion_jax.samplers.heun import Heun


@dataclasses.dataclass(frozen=True)
class Restart(Sampler):
    """``restarts`` (K) cycles of ``restart_steps`` Heun steps each, over ``[rho_min, rho_max]``
    (the paper's VP-ImageNet setting by default); ``s_noise`` scales the injected noise."""

    restarts: int = 2
    restart_steps: int = 3
    rho_min: float = 0.06
    rho_max: float = 0.30
    s_noise: float = 1.0
    stochastic = True
    expands_grid = True
    nonnegative = ("s_noise",)
    nfe_per_step = 2
    min_steps = 2

    def validate(self):
        super().validate()
        if self.restarts < 0 or self.restart_steps < 1:
            raise ValueError(f"Restart needs restarts >= 0 and restart_steps >= 1, got "
                             f"{self.restarts} and {self.restart_steps}")
        if not 0 < self.rho_min < self.rho_max:
            raise ValueError(f"Restart needs 0 < rho_min < rho_max, got rho_min={self.rho_min}, "
                             f"rho_max={self.rho_max}")

    def nfe(self, num_steps: int) -> int:
        return 2 * (num_steps + self.restarts * self.restart_steps)

    def expand_grid(self, process, ts) -> np.ndarray:
        """The main grid ``ts`` with the restart cycles inserted after the interior grid point
        closest (in log rho) to ``rho_min`` among those below ``rho_max``."""
        ts = np.asarray(ts, dtype=np.float64)
        if self.restarts == 0:
            return ts
        with jax.ensure_compile_time_eval():  # concrete even when called while tracing
            return self._expand(process, ts)

    def _expand(self, process, ts):
        rho = np.array([float(process.sigma(t) / process.alpha(t)) for t in ts])
        inner = [j for j in range(1, len(ts) - 1) if rho[j] < self.rho_max]
        if not inner:
            raise ValueError(f"Restart: no interior grid point below rho_max={self.rho_max} "
                             f"(grid rho from {rho[0]:.3g} to {rho[-1]:.3g} in {len(ts) - 1} "
                             "steps); use more steps or a larger rho_max")
        j = min(inner, key=lambda k: abs(np.log(rho[k] / self.rho_min)))
        t_lo = ts[j]
        t_hi = float(process.t_of_logsnr(-2.0 * np.log(self.rho_max)))
        lam = np.linspace(-np.log(self.rho_max), -np.log(rho[j]), self.restart_steps + 1)
        sub = [float(process.t_of_logsnr(2.0 * v)) for v in lam[1:-1]]
        cycle = [t_hi, *sub, t_lo]  # renoise to t_hi, then restart_steps ODE steps to t_lo
        return np.concatenate([ts[:j + 1], np.tile(cycle, self.restarts), ts[j + 1:]])

    def step(self, ctx, carry, i, t, t_next, key):
        heun = Heun()

        def renoise(x):
            a_s, s_s, _ = coeffs(ctx.process, t)
            a_t, s_t, _ = coeffs(ctx.process, t_next)
            r = a_t / a_s
            std = jnp.sqrt(jnp.maximum(s_t**2 - (r * s_s) ** 2, 0.0)) * self.s_noise
            return r * x + std * jax.random.normal(key, x.shape, x.dtype)

        def ode(x):
            return heun.step(ctx, Carry(x), i, t, t_next, key).x

        return Carry(jax.lax.cond(t_next > t, renoise, ode, carry.x))
