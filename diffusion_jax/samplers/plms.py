"""PLMS: pseudo linear multistep (Liu et al. 2022, PNDM, eq. 12), Adams-Bashforth on ``eps_hat``
with the DDIM transfer. Warm-up uses lower-order Adams-Bashforth (1 NFE per step throughout)
instead of PNDM's Runge-Kutta steps."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from diffusion_jax.samplers.base import Carry, Sampler, coeffs, ddim_transfer, eps_hat, ring, ring_get, ring_put

# Adams-Bashforth coefficients for orders 1..4, newest first.
_AB = ((1.0, 0.0, 0.0, 0.0), (1.5, -0.5, 0.0, 0.0), (23 / 12, -16 / 12, 5 / 12, 0.0),
       (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@dataclasses.dataclass(frozen=True)
class PLMS(Sampler):
    order: int = 4

    def validate(self):
        if self.order not in (1, 2, 3, 4):
            raise ValueError(f"PLMS order must be 1..4, got {self.order}")

    def init(self, ctx, x):
        return Carry(x, ring(x, 3))

    def step(self, ctx, carry, i, t, t_next, key):
        x = carry.x
        a_s, s_s, _ = coeffs(ctx.process, t)
        a_t, s_t, _ = coeffs(ctx.process, t_next)
        _, eps = eps_hat(ctx, x, t)
        hist = ring_put(carry.ring, i, eps)
        k = jnp.minimum(i + 1, self.order) - 1
        w = jnp.asarray(_AB, x.dtype)[k]
        eps_ab = sum(w[j] * ring_get(hist, i, j) for j in range(self.order))
        x0 = (x - s_s * eps_ab) * (1.0 / a_s)
        return Carry(ddim_transfer(x, x0, a_s, s_s, a_t, s_t), hist)
