"""DEIS with polynomial extrapolation in ``rho = sigma / alpha`` (Zhang & Chen 2023, rhoAB-DEIS),
which with order 4 is the variable-step iPNDM (iPNDM-v, Zhou et al. 2024).

In ``y = x / alpha`` and ``rho = sigma / alpha`` the probability-flow ODE is ``dy/drho = eps(y,
rho)``: no linear term, so integrating a polynomial of ``eps`` is exact. Step ``i`` fits the
Lagrange polynomial through the last ``k`` noise predictions at their own ``rho`` (any spacing)
and integrates it over ``[rho_s, rho_t]`` with Gauss-Legendre quadrature (exact for these
degrees). The coefficients follow the grid, so the order is ``k`` on every grid; ``PLMS`` (fixed
Adams-Bashforth weights, i.e. iPNDM) has order 4 only on grids uniform in ``rho`` and about 1.7 on
the ``logsnr`` grid (test_multistep_true_orders). 1 NFE per step; lower orders during warm-up.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers.base import Sampler, coeffs, eps_hat, push

_GAUSS = np.polynomial.legendre.leggauss(3)  # exact for polynomials of degree <= 5


def _ab_weights(rhos, rho_t, k: int):
    """``int_{rhos[0]}^{rho_t} L_j(rho) d rho`` for the Lagrange basis on ``rhos[:k]``."""
    a, b = rhos[0], rho_t
    nodes, w = _GAUSS
    q = 0.5 * (b - a) * jnp.asarray(nodes, rhos.dtype) + 0.5 * (a + b)
    out = []
    for j in range(k):
        basis = jnp.ones_like(q)
        for m in range(k):
            if m != j:
                basis = basis * (q - rhos[m]) / (rhos[j] - rhos[m])
        out.append(0.5 * (b - a) * jnp.sum(jnp.asarray(w, rhos.dtype) * basis))
    return out


@dataclasses.dataclass(frozen=True)
class DEIS(Sampler):
    order: int = 3

    def validate(self):
        if self.order not in (1, 2, 3, 4):
            raise ValueError(f"DEIS order must be 1, 2, 3 or 4, got {self.order}")

    def init(self, ctx, x):
        k = max(self.order - 1, 1)
        return {"x": x, "eps": jnp.zeros((k,) + x.shape, x.dtype),
                "rhos": jnp.arange(2, k + 2, dtype=x.dtype)}  # placeholders, unused in warm-up

    def step(self, ctx, carry, i, t, t_next, key):
        x = carry["x"]
        a_s, s_s, _ = coeffs(ctx.process, t)
        a_t, s_t, _ = coeffs(ctx.process, t_next)
        _, e = eps_hat(ctx, x, t)
        rho_s, rho_t = s_s / a_s, s_t / a_t
        rhos = jnp.concatenate([rho_s[None], carry["rhos"]])
        eps = jnp.concatenate([e[None], carry["eps"]], axis=0)
        y = x / a_s
        k_now = jnp.minimum(self.order, i + 1)
        y_new = y + (rho_t - rho_s) * e  # order 1: DDIM
        for k in range(2, self.order + 1):
            w = _ab_weights(rhos, rho_t, k)
            y_k = y + sum(w[j] * eps[j] for j in range(k))
            y_new = jnp.where(k_now == k, y_k, y_new)
        return {"x": a_t * y_new, "eps": push(carry["eps"], e), "rhos": push(carry["rhos"], rho_s)}
