"""UniPC (Zhao et al. 2023): the UniP-p multistep predictor and the UniC corrector, with data
prediction and ``B(h) = h`` (``bh1``) or ``e^h - 1`` (``bh2``).

Step ``i`` evaluates ``m_i = x0_hat(x_i, t_i)`` once; UniC uses it to correct ``x_i`` (the model
output is *not* recomputed at the corrected point, so UniPC costs 1 NFE per step), then UniP-p
predicts ``x_{i+1}``. The final grid point gets no corrector: the driver's final denoising step
evaluates the model there instead.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

from diffusion_jax.samplers.base import Carry, Sampler, coeffs, push, ring, ring_get, ring_put
from diffusion_jax.samplers.dpm_solver import _order_at


def _phi_system(h, rks, variant):
    """``R`` (powers of the ratios ``r_k``) and ``b`` of UniPC's linear system (Alg. 2/3)."""
    hh = -h  # data prediction integrates in -lambda
    h_phi_1 = jnp.expm1(hh)
    b_h = hh if variant == "bh1" else jnp.expm1(hh)
    h_phi_k, fact, b = h_phi_1 / hh - 1.0, 1.0, []
    for k in range(1, len(rks) + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    r = jnp.stack([jnp.stack(rks) ** (k - 1) for k in range(1, len(rks) + 1)])
    return h_phi_1, b_h, r, jnp.stack(b)


def _unipc_update(x, m0, hist_m, hist_l, l_s, a_t, s_ratio, h, order, variant, m_new=None):
    """UniP (``m_new is None``) or UniC (``m_new`` = the model output at the target) of ``order``.

    ``hist_m/hist_l``: earlier model outputs and lambdas, newest first (excluding ``m0``)."""
    rks = [(hist_l[k] - l_s) / h for k in range(order - 1)]
    d1s = [(hist_m[k] - m0) * (1.0 / rks[k]) for k in range(order - 1)]
    rks.append(jnp.ones_like(h))
    h_phi_1, b_h, r, b = _phi_system(h, rks, variant)
    x_base = s_ratio * x - a_t * h_phi_1 * m0
    if m_new is None:  # predictor: order-1 differences
        if order == 1:
            return x_base
        rhos = jnp.array([0.5], x.dtype) if order == 2 else jnp.linalg.solve(r[:-1, :-1], b[:-1])
        return x_base - a_t * b_h * sum(rhos[k] * d1s[k] for k in range(order - 1))
    rhos = jnp.array([0.5], x.dtype) if order == 1 else jnp.linalg.solve(r, b)
    corr = sum(rhos[k] * d1s[k] for k in range(order - 1)) + rhos[-1] * (m_new - m0)
    return x_base - a_t * b_h * corr


@dataclasses.dataclass(frozen=True)
class UniPC(Sampler):
    order: int = 2
    variant: Literal["bh1", "bh2"] = "bh2"
    corrector: bool = True
    lower_order_final: bool = True

    def validate(self):
        if self.order not in (1, 2, 3):
            raise ValueError(f"UniPC order must be 1, 2 or 3, got {self.order}")
        if self.variant not in ("bh1", "bh2"):
            raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {self.variant!r}")

    def init(self, ctx, x):
        k = self.order
        return Carry(x, ring(x, k), jnp.arange(k, dtype=x.dtype) + 1.0, x_prev=x,
                     t_prev=jnp.ones((), x.dtype), order_prev=jnp.int32(1))

    def step(self, ctx, carry, i, t, t_next, key):
        p, x = ctx.process, carry.x
        a_s, s_s, l_s = coeffs(p, t)
        a_t, s_t, l_t = coeffs(p, t_next)
        ring_ms = ring_put(carry.ring, i, ctx.denoise(x, t))
        ms = [ring_get(ring_ms, i, j) for j in range(self.order + 1)]  # m_i, m_{i-1}, ...
        m, lams = ms[0], carry.past
        if self.corrector:  # UniC on x_i, from x_{i-1} with the previous step's order
            l_p = lams[0]
            s_p = p.sigma(carry.t_prev)
            h_c = jnp.where(i > 0, l_s - l_p, 1.0)
            cands = [_unipc_update(carry.x_prev, ms[1], ms[2:], lams[1:], l_p, a_s, s_s / s_p,
                                   h_c, k, self.variant, m_new=m) for k in range(1, self.order + 1)]
            xc = cands[0]
            for k in range(2, self.order + 1):
                xc = jnp.where(carry.order_prev == k, cands[k - 1], xc)
            x = jnp.where(i > 0, xc, x)
        lams = push(lams, l_s)
        h = l_t - l_s
        k_now = _order_at(i, ctx.num_steps, self.order, self.lower_order_final, h, l_s - lams[1],
                          (lams[1] - lams[2]) if self.order == 3 else None)
        cands = [_unipc_update(x, m, ms[1:], lams[1:], l_s, a_t, s_t / s_s, h, k, self.variant)
                 for k in range(1, self.order + 1)]
        x_new = cands[0]
        for k in range(2, self.order + 1):
            x_new = jnp.where(k_now == k, cands[k - 1], x_new)
        return Carry(x_new, ring_ms, lams, x_prev=x, t_prev=t,
                     order_prev=k_now.astype(jnp.int32))
