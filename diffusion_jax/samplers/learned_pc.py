"""A predictor-corrector whose coefficients are learned with its grid (S4S-style).

The fixed low-order formulas of DPM-Solver++ and UniPC assume the denoised trajectory ``D``
is a low-degree polynomial in ``lambda`` over each step; at 5-10 NFE, with steps of 1-3 in
``lambda``, it is not, and the grid alone cannot fix that (learned grids reached 0.13-0.93x the
fixed-grid error on the exact mixtures of ``bench-samplers``). Learning the combination weights
of the past denoiser outputs as well as the times, against reference endpoints, is what S4S
(Frankel et al. 2025, "Solving for a Solver") and LD3 (Tong et al. 2025, times only) do; here it
runs through the same compiled scan as every sampler.

Step ``i`` (``lambda = logsnr/2``, ``h = lambda_{i+1} - lambda_i``, ``m_i = D(x^p_i, t_i)``, one
NFE; ``x^p_0 = x_T``):

* corrector (``i > 0``): ``x_i = (sigma_i/sigma_{i-1}) x_{i-1} - alpha_i expm1(-h_{i-1}) *
  [m_{i-1} + (k1 + q + c_{i-1,0}) (m_i - m_{i-1}) + sum_j (c_{i-1,j} - [j = 1] q/r)
  (m_{i-1} - m_{i-1-j})]``, ``q = (k2 - k1)/(1 + r)``, ``r = h_{i-2}/h_{i-1}`` (``q = 0`` at
  ``i = 1``)
* predictor: ``x^p_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} expm1(-h) *
  [m_i + sum_j (w_{i,j} + [j = 1] k1(h)/r_i) (m_i - m_{i-j})]``, ``r_i = h_{i-1}/h``

with ``k1(h) = (h - 1 + e^{-h}) / (h (1 - e^{-h}))`` and ``k2(h)``: the means of ``tau`` and
``tau^2`` under the data-prediction kernel of the step (``-> 1/2, 1/3`` as ``h -> 0``): the
exact weights of a ``D`` linear (predictor) or quadratic (corrector, through ``m_i, m_{i-1},
m_{i-2}``) in ``lambda``. With zero coefficients this is DPM-Solver++(2M) with exact
phi-functions corrected to order 3, like UniPC-2 (``test_convergence_order[learned_pc]``; a
two-point corrector on the same predictor converged at order 1.5 on the logsnr grid).
The final step (after the driver's last call ``m_N``) corrects ``x_N`` and returns
``(1/2 + f_0) x_N/alpha_N + (1/2 - f_0 - f_1 - f_2) m_N + f_1 m_{N-1} + f_2 m_{N-2}`` (zero
``f``: the ODE final step ``(y + m_N)/2`` of ``final_step``). ``optimize_solver`` learns ``w``,
``c``, ``f`` and the times; with ``corrector=False`` only ``w`` and ``f``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from diffusion_jax.samplers.base import Carry, Sampler, coeffs, push, ring, ring_get, ring_put

MAX_HISTORY = 3


def exp_weight(h):
    """``k(h)``: the mean of ``tau`` in ``[0, 1]`` under the data-prediction exponential kernel
    of a step ``h`` in ``lambda`` (the weight of a unit slope of ``D`` per step)."""
    return (h + jnp.expm1(-h)) / (h * -jnp.expm1(-h))


def exp_weight2(h):
    """The mean of ``tau^2`` under the same kernel (``-> 1/3`` as ``h -> 0``)."""
    return (h * h - 2.0 * h - 2.0 * jnp.expm1(-h)) / (h * h * -jnp.expm1(-h))


@dataclasses.dataclass(frozen=True)
class LearnedPC(Sampler):
    """``history`` past differences in each update; ``pred [N, history]``, ``corr [N, history +
    1]`` and ``fin [3]`` are the learned coefficients (``None``: zeros; tuples of floats when
    stored, so the sampler is hashable and compiles once). ``N`` must be the grid's steps.
    ``corrector``: a bool, or inside ``optimize_solver`` a traced gate (0: off)."""

    history: int = MAX_HISTORY
    corrector: bool = True
    pred: Any = None
    corr: Any = None
    fin: Any = None

    def validate(self):
        if not 1 <= self.history <= MAX_HISTORY:
            raise ValueError(f"LearnedPC history must be 1..{MAX_HISTORY}, got {self.history}")

    def _tables(self, n: int, dtype):
        k = self.history
        out = []
        for name, shape in (("pred", (n, k)), ("corr", (n, k + 1)), ("fin", (3,))):
            v = getattr(self, name)
            v = jnp.zeros(shape, dtype) if v is None else jnp.asarray(v, dtype)
            if v.shape != shape:
                raise ValueError(f"LearnedPC.{name} has shape {v.shape}, this grid of {n} steps "
                                 f"needs {shape}: learn the solver for {n} steps "
                                 "(optimize_solver)")
            out.append(v)
        return out

    def init(self, ctx, x):
        return Carry(x, ring(x, self.history + 1), jnp.zeros((2,), x.dtype), x_prev=x,
                     t_prev=jnp.ones((), x.dtype))

    def _correct(self, ctx, carry, ms, i, t):
        """``x_i`` from the corrected ``x_{i-1}`` and ``m_i`` (``x^p_0`` itself at ``i = 0``)."""
        if self.corrector is False:  # (inside optimize_solver a traced gate, 0: off)
            return carry.x
        _, corr, _ = self._tables(ctx.num_steps, carry.x.dtype)
        a_s, s_s, l_s = coeffs(ctx.process, t)
        s_p = ctx.process.sigma(carry.t_prev)
        lams = carry.past
        h = jnp.where(i > 0, l_s - lams[0], 1.0)
        r = jnp.where(i > 1, (lams[0] - lams[1]) / h, 1.0)
        k1, k2 = exp_weight(h), exp_weight2(h)
        quad = jnp.where(i > 1, (k2 - k1) / (1.0 + r), 0.0)  # D quadratic through 3 points
        c = corr[jnp.maximum(i - 1, 0)]
        m_new, m_old = ring_get(ms, i, 0), ring_get(ms, i, 1)
        cm = m_old + (k1 + quad + c[0]) * (m_new - m_old)
        for j in range(1, self.history + 1):
            w = c[j] - (quad / r if j == 1 else 0.0)
            cm = cm + jnp.where(i - 1 - j >= 0, w, 0.0) * (m_old - ring_get(ms, i, 1 + j))
        xc = (s_s / s_p) * carry.x_prev - a_s * jnp.expm1(-h) * cm
        return jnp.where((i > 0) & (self.corrector > 0), xc, carry.x)

    def step(self, ctx, carry, i, t, t_next, key):
        p = ctx.process
        pred, _, _ = self._tables(ctx.num_steps, carry.x.dtype)
        ms = ring_put(carry.ring, i, ctx.denoise(carry.x, t))
        x = self._correct(ctx, carry, ms, i, t)
        a_s, s_s, l_s = coeffs(p, t)
        a_t, s_t, l_t = coeffs(p, t_next)
        h = l_t - l_s
        r_inv = jnp.where(i > 0, h / (l_s - carry.past[0]), 0.0)
        m = ring_get(ms, i, 0)
        pm = m
        for j in range(1, self.history + 1):
            w = pred[i, j - 1] + (exp_weight(h) * r_inv if j == 1 else 0.0)
            pm = pm + jnp.where(i - j >= 0, w, 0.0) * (m - ring_get(ms, i, j))
        x_next = (s_t / s_s) * x - a_t * jnp.expm1(-h) * pm
        return Carry(x_next, ms, push(carry.past, l_s), x_prev=x, t_prev=t)

    def finish(self, ctx, carry, x0, t, kind):
        if kind == "denoise":  # inpainting by replacement wants the last denoised estimate
            return x0
        n = ctx.num_steps
        _, _, fin = self._tables(n, x0.dtype)
        ms = ring_put(carry.ring, n, x0)
        y = self._correct(ctx, carry, ms, jnp.int32(n), t) / ctx.process.alpha(t)
        f2 = fin[2] if n >= 2 else 0.0
        return ((0.5 + fin[0]) * y + (0.5 - fin[0] - fin[1] - f2) * x0
                + fin[1] * ring_get(ms, n, 1) + f2 * ring_get(ms, n, 2))

    def to_json(self) -> dict:
        return {"history": self.history, "corrector": self.corrector,
                **{k: None if getattr(self, k) is None else jnp.asarray(getattr(self, k)).tolist()
                   for k in ("pred", "corr", "fin")}}

    @classmethod
    def from_json(cls, row: dict) -> "LearnedPC":
        tup = lambda v: None if v is None else (tuple(tuple(float(a) for a in r) for r in v)
                                                if isinstance(v[0], list) else
                                                tuple(float(a) for a in v))
        return cls(history=int(row["history"]), corrector=bool(row["corrector"]),
                   pred=tup(row["pred"]), corr=tup(row["corr"]), fin=tup(row["fin"]))
