"""DEIS (Zhang & Chen 2023): the exponential integrator with polynomial extrapolation of the
noise prediction, in ``rho = sigma / alpha`` (rhoAB-DEIS; with order 4 the variable-step iPNDM,
iPNDM-v, Zhou et al. 2024) or in ``t`` (tAB-DEIS, ``variable="t"``).

In ``y = x / alpha`` and ``rho = sigma / alpha`` the probability-flow ODE is ``dy/drho = eps(y,
rho)``: no linear term, so integrating a polynomial of ``eps`` is exact. Step ``i`` fits the
Lagrange polynomial through the last ``k`` noise predictions at their own ``rho`` (any spacing)
and integrates it over ``[rho_s, rho_t]`` with Gauss-Legendre quadrature (exact for these
degrees). The coefficients follow the grid, so the order is ``k`` on every grid; ``PLMS`` (fixed
Adams-Bashforth weights, i.e. iPNDM) has order 4 only on grids uniform in ``rho`` and about 1.7 on
the ``logsnr`` grid (test_multistep_true_orders). 1 NFE per step; lower orders during warm-up.

tAB fits the polynomial in ``t`` instead: ``y_t = y_s + sum_j eps_j int_s^t rho'(tau) L_j(tau)
d tau``, with ``rho'`` by autodiff of the process and an 8-node Gauss-Legendre rule (``rho'`` is
not a polynomial, so the rule is not exact, but its error is far below the method's).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers.base import Carry, Sampler, coeffs, eps_hat, push, ring, ring_get, ring_put

_GAUSS = np.polynomial.legendre.leggauss(3)  # exact for polynomials of degree <= 5
_GAUSS_T = np.polynomial.legendre.leggauss(8)
VARIABLES = ("rho", "t")


def _ab_weights(rhos, rho_t, k: int, density=None, rule=_GAUSS):
    """``int_{rhos[0]}^{rho_t} density(v) L_j(v) dv`` for the Lagrange basis on ``rhos[:k]``
    (``density = 1`` when None)."""
    a, b = rhos[0], rho_t
    nodes, w = rule
    q = 0.5 * (b - a) * jnp.asarray(nodes, rhos.dtype) + 0.5 * (a + b)
    wq = jnp.asarray(w, rhos.dtype) * (1.0 if density is None else density(q))
    out = []
    for j in range(k):
        basis = jnp.ones_like(q)
        for m in range(k):
            if m != j:
                basis = basis * (q - rhos[m]) / (rhos[j] - rhos[m])
        out.append(0.5 * (b - a) * jnp.sum(wq * basis))
    return out


@dataclasses.dataclass(frozen=True)
class DEIS(Sampler):
    order: int = 3
    variable: str = "rho"  # rho: rhoAB-DEIS (and iPNDM-v); t: tAB-DEIS

    def validate(self):
        if self.order not in (1, 2, 3, 4):
            raise ValueError(f"DEIS order must be 1, 2, 3 or 4, got {self.order}")
        if self.variable not in VARIABLES:
            raise ValueError(f"DEIS variable must be one of {', '.join(VARIABLES)}, got "
                             f"{self.variable!r}")

    def init(self, ctx, x):
        k = max(self.order - 1, 1)
        # the past rhos are placeholders until the warm-up has filled them
        return Carry(x, ring(x, k), jnp.arange(2, k + 2, dtype=x.dtype))

    def step(self, ctx, carry, i, t, t_next, key):
        x = carry.x
        a_s, s_s, _ = coeffs(ctx.process, t)
        a_t, s_t, _ = coeffs(ctx.process, t_next)
        _, e = eps_hat(ctx, x, t)
        rho_s, rho_t = s_s / a_s, s_t / a_t
        tab = self.variable == "t"
        v_s, v_t = (t, t_next) if tab else (rho_s, rho_t)
        rhos = jnp.concatenate([jnp.asarray(v_s, x.dtype)[None], carry.past])
        p = ctx.process
        drho = jax.vmap(jax.grad(lambda u: p.sigma(u) / p.alpha(u))) if tab else None
        hist = ring_put(carry.ring, i, e)
        eps = [ring_get(hist, i, j) for j in range(self.order)]
        e = eps[0]
        y = x * (1.0 / a_s)
        k_now = jnp.minimum(self.order, i + 1)
        y_new = y + (rho_t - rho_s) * e  # order 1: DDIM
        for k in range(2, self.order + 1):
            w = (_ab_weights(rhos, jnp.asarray(v_t, x.dtype), k, drho, _GAUSS_T) if tab else
                 _ab_weights(rhos, rho_t, k))
            y_k = y + sum(w[j] * eps[j] for j in range(k))
            y_new = jnp.where(k_now == k, y_k, y_new)
        return Carry(a_t * y_new, hist, push(carry.past, jnp.asarray(v_s, x.dtype)))
