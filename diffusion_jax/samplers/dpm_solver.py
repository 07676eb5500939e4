"""DPM-Solver (Lu et al. 2022a) and DPM-Solver++ (Lu et al. 2022b), written in
``lambda = log(alpha/sigma)`` with step ``h = lambda_t - lambda_s``.

Multistep methods compute every order's update (cheap: a few axpys) and pick one with
``jnp.where`` on the step index, so warm-up and lower-order final steps need no Python branch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffusion_jax.samplers.base import (Carry, Sampler, coeffs, eps_hat, push, ring, ring_get,
                                         ring_put, t_of_lambda)

# A multistep update of order k extrapolates the last k model outputs in lambda. Two things make
# that extrapolation go wrong, and the order is lowered for both: a step much longer than the
# ones the outputs came from (order k needs each of its steps at most STEP_RATIO_MAX times the
# one before), and a long step into t_min, where x0_hat saturates in lambda (the last k-1 steps
# take orders k-1, ..., 1 while they are longer than FINAL_H_MAX). Both thresholds were chosen
# by sweeping 4..40 steps on the uniform, quadratic, karras and logsnr grids (see
# test_no_error_jump_across_step_counts); long runs keep the full order at the end.
STEP_RATIO_MAX = 2.0
FINAL_H_MAX = 0.5


def _order_at(i, n, order, lower_order_final, h, h_prev, h_prev2=None):
    """The order of multistep step ``i`` of ``n``: warm-up ``min(order, i + 1)``; with
    ``lower_order_final``, ``min(., n - i)`` on final steps longer than ``FINAL_H_MAX`` and 1
    (or 2) where the step size jumps (above). It follows the step sizes, not a step count:
    DPM-Solver++'s ``n < 15`` switch made 3M 20x and UniPC 30x worse from 14 to 15 steps on a
    uniform grid."""
    k = jnp.minimum(order, i + 1)
    if lower_order_final:
        k = jnp.where(h > FINAL_H_MAX, jnp.minimum(k, n - i), k)
        k = jnp.where(h > STEP_RATIO_MAX * h_prev, jnp.minimum(k, 1), k)
        if h_prev2 is not None:
            k = jnp.where(h_prev > STEP_RATIO_MAX * h_prev2, jnp.minimum(k, 2), k)
    return k


@dataclasses.dataclass(frozen=True)
class DPMSolver(Sampler):
    """Singlestep DPM-Solver-1/2/3 with noise prediction (Lu et al. 2022a, Alg. 1 and eqs. 3.8,
    A.3; ``r1 = 1/2`` for order 2, ``r1, r2 = 1/3, 2/3`` for order 3). ``order`` NFE per step."""

    order: int = 2

    def validate(self):
        if self.order not in (1, 2, 3):
            raise ValueError(f"DPMSolver order must be 1, 2 or 3, got {self.order}")

    @property
    def nfe_per_step(self) -> int:
        return self.order

    def low_nfe_warning(self, nfe: int) -> str | None:
        """Noise prediction at orders 2-3 blows up at low NFE (measured: RMSE 25 on the ring and
        220 at d=3072 at NFE 5, where dpmpp_2s stays below 0.1); ``sample`` warns below 11."""
        if self.order < 2 or nfe >= 11:
            return None
        return (f"DPMSolver(order={self.order}) predicts noise and is unstable below 11 NFE (Lu "
                "et al. 2022b: errors of 10-200x measured here at NFE 5); use the "
                "data-prediction dpmpp_2s, dpmpp_2m or unipc")

    def step(self, ctx, carry, i, t, t_next, key):
        p, x = ctx.process, carry.x
        a_s, s_s, l_s = coeffs(p, t)
        a_t, s_t, l_t = coeffs(p, t_next)
        h = l_t - l_s
        _, e_s = eps_hat(ctx, x, t)

        def first(a_u, s_u, hu, eps):  # x_u from x_s with eps fixed (DDIM)
            return (a_u / a_s) * x - s_u * jnp.expm1(hu) * eps

        if self.order == 1:
            return Carry(first(a_t, s_t, h, e_s))
        r1 = 0.5 if self.order == 2 else 1 / 3
        s1 = t_of_lambda(p, l_s + r1 * h)
        a1, sg1, _ = coeffs(p, s1)
        u1 = first(a1, sg1, r1 * h, e_s)
        d1 = eps_hat(ctx, u1, s1)[1] - e_s
        if self.order == 2:
            return Carry(first(a_t, s_t, h, e_s) - s_t / (2 * r1) * jnp.expm1(h) * d1)
        r2 = 2 / 3
        s2 = t_of_lambda(p, l_s + r2 * h)
        a2, sg2, _ = coeffs(p, s2)
        phi = lambda hh: jnp.expm1(hh) / hh - 1.0
        u2 = first(a2, sg2, r2 * h, e_s) - sg2 * (r2 / r1) * phi(r2 * h) * d1
        d2 = eps_hat(ctx, u2, s2)[1] - e_s
        return Carry(first(a_t, s_t, h, e_s) - s_t / r2 * phi(h) * d2)


@dataclasses.dataclass(frozen=True)
class DPMSolverPP2S(Sampler):
    """Singlestep DPM-Solver++(2S) with data prediction (Lu et al. 2022b, Alg. 1, ``r = 1/2``)."""

    nfe_per_step = 2

    def step(self, ctx, carry, i, t, t_next, key):
        p, x = ctx.process, carry.x
        a_s, s_s, l_s = coeffs(p, t)
        a_t, s_t, l_t = coeffs(p, t_next)
        h, r = l_t - l_s, 0.5
        x0 = ctx.denoise(x, t)
        s1 = t_of_lambda(p, l_s + r * h)
        a1, sg1, _ = coeffs(p, s1)
        u = (sg1 / s_s) * x - a1 * jnp.expm1(-r * h) * x0
        d = ctx.denoise(u, s1)
        x0_mix = (1 - 1 / (2 * r)) * x0 + 1 / (2 * r) * d
        return Carry((s_t / s_s) * x - a_t * jnp.expm1(-h) * x0_mix)


def _multistep_init(x, k):
    return Carry(x, ring(x, k), jnp.zeros((k,), x.dtype))


@dataclasses.dataclass(frozen=True)
class DPMSolverPP(Sampler):
    """Multistep DPM-Solver++ 2M / 3M with data prediction (Lu et al. 2022b, Alg. 2 and App. B;
    the 3M update is the third-order multistep Taylor expansion of their eq. 8, with the
    second-derivative term at its exact weight: see the comment in ``step``)."""

    order: int = 2
    lower_order_final: bool = True

    def validate(self):
        if self.order not in (1, 2, 3):
            raise ValueError(f"DPMSolverPP order must be 1, 2 or 3, got {self.order}")

    def init(self, ctx, x):
        return _multistep_init(x, max(self.order - 1, 1))

    def step(self, ctx, carry, i, t, t_next, key):
        p, x = ctx.process, carry.x
        a_s, s_s, l_s = coeffs(p, t)
        a_t, s_t, l_t = coeffs(p, t_next)
        h = l_t - l_s
        x0s = ring_put(carry.ring, i, ctx.denoise(x, t))
        m0 = ring_get(x0s, i, 0)  # read back from the ring: see base.ring
        m1, l1 = ring_get(x0s, i, 1), carry.past[0]
        r0 = jnp.where(i > 0, (l_s - l1) / h, 1.0)
        d1_0 = (m0 - m1) * (1.0 / r0)  # scalar reciprocals: no division per element
        em = jnp.expm1(-h)  # e^{-h} - 1
        base = (s_t / s_s) * x - a_t * em * m0
        updates = [base, base - 0.5 * a_t * em * d1_0]
        if self.order == 3:
            m2, l2 = ring_get(x0s, i, 2), carry.past[1]
            r1 = jnp.where(i > 1, (l1 - l2) / h, 1.0)
            d1_1 = (m1 - m2) * (1.0 / r1)
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) * (1.0 / (r0 + r1))
            # x0_hat'' enters the exact integral as -a_t * phi_3 * h^2 * x0'' and d2 estimates
            # h^2 x0'' / 2 on any grid: hence the 2. k-diffusion's dpmpp_3m_sde (and the ports of
            # it) uses phi_3 * d2, half the term, which leaves an O(h^3) local error: with an
            # exact warm start, global order 1.98 instead of 2.94 (test_multistep_true_orders).
            updates.append(base + a_t * (em / h + 1.0) * d1 - 2.0 * a_t * ((em + h) / h**2 - 0.5) * d2)
        h_prev = l_s - l1
        h_prev2 = (l1 - carry.past[1]) if self.order == 3 else None
        k = _order_at(i, ctx.num_steps, self.order, self.lower_order_final, h, h_prev, h_prev2)
        x_new = updates[0]
        for j in range(1, len(updates)):
            x_new = jnp.where(k == j + 1, updates[j], x_new)
        return Carry(x_new, x0s, push(carry.past, l_s))


@dataclasses.dataclass(frozen=True)
class DPMSolverPPSDE(Sampler):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, eq. 18; midpoint form), first order on the first
    and the last step (and where the step size jumps, see ``_order_at``)."""

    lower_order_final: bool = True
    stochastic = True

    def init(self, ctx, x):
        return _multistep_init(x, 1)

    def step(self, ctx, carry, i, t, t_next, key):
        p, x = ctx.process, carry.x
        a_s, s_s, l_s = coeffs(p, t)
        a_t, s_t, l_t = coeffs(p, t_next)
        h = l_t - l_s
        x0s = ring_put(carry.ring, i, ctx.denoise(x, t))
        m0 = ring_get(x0s, i, 0)  # read back from the ring: see base.ring
        r0 = jnp.where(i > 0, (l_s - carry.past[0]) / h, 1.0)
        k = _order_at(i, ctx.num_steps, 2, self.lower_order_final, h, l_s - carry.past[0])
        d1 = jnp.where(k == 2, (m0 - ring_get(x0s, i, 1)) * (1.0 / r0), 0.0)
        one_m = -jnp.expm1(-2.0 * h)  # 1 - e^{-2h}
        z = jax.random.normal(key, x.shape, x.dtype)
        x_new = ((s_t / s_s) * jnp.exp(-h) * x + a_t * one_m * (m0 + 0.5 * d1)
                 + s_t * jnp.sqrt(one_m) * z)
        return Carry(x_new, x0s, push(carry.past, l_s))
