"""The sampler contract and the small helpers every sampler shares.

A sampler is a frozen dataclass of hyper-parameters. What callers may ask of it is declared
here, with defaults (diffrax's way: a solver says what it can do; nobody probes it):

* ``init(ctx, x_T) -> Carry`` and ``step(ctx, carry, i, t, t_next, key) -> Carry``: one step
  from ``t`` to ``t_next < t`` (``i`` is the step index, a traced int; ``key`` a fresh key);
* ``finish(ctx, carry, x0, t, kind) -> x``: the step to the data end after the driver's final
  denoiser call (default ``final_step``; ``LearnedPC`` uses its history there);
* ``nfe(num_steps)``, ``nfe_per_step``, ``min_steps``, ``stochastic``;
* ``adaptive`` / ``solve(...)``: a solver that chooses its own grid (``solve`` replaces the scan);
* ``expands_grid`` / ``expand_grid(process, ts)``: a sampler that rewrites a concrete grid
  before the scan (Restart inserts its cycles);
* ``low_nfe_warning(nfe)``: a warning the driver prints, or ``None``;
* ``nonnegative``: the fields ``validate`` checks are ``>= 0``.

``ctx`` carries the denoiser, the process and the static number of steps: samplers never see
networks or parameters. All arithmetic is written with ``jnp.where`` on the step index, never a
Python ``if`` on values, so that the driver compiles the whole run as one ``lax.scan``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.parameterization import eps_from_x0, score_from_x0
from diffusion_jax.processes import Process

Array = jax.Array


class Context(NamedTuple):
    denoise: Callable[[Array, Array], Array]  # (x [B,...], t []) -> x0_hat [B,...]
    process: Process
    num_steps: int


class Carry(NamedTuple):
    """What a sampler carries from step to step (a pytree; unused fields stay ``None``)."""
    x: Array                          # the current point x_t
    ring: Array | None = None         # multistep: past network outputs (``ring``)
    past: Array | None = None         # multistep: past positions (lambda, rho or t), newest first
    x_prev: Array | None = None       # correctors: the previous (corrected) point
    t_prev: Array | None = None       # correctors: the previous time
    order_prev: Array | None = None   # UniPC: the previous step's order


class Sampler:
    nfe_per_step: int = 1
    min_steps: int = 1
    stochastic: bool = False
    adaptive: bool = False            # chooses its own grid: ``solve`` replaces the scan
    expands_grid: bool = False        # ``expand_grid`` inserts points into a concrete grid
    nonnegative: tuple[str, ...] = ()  # fields that must be >= 0

    def init(self, ctx: Context, x: Array) -> Carry:
        return Carry(x)

    def step(self, ctx: Context, carry: Carry, i, t, t_next, key) -> Carry:
        raise NotImplementedError

    def finish(self, ctx: Context, carry: Carry, x0: Array, t, kind: str) -> Array:
        """The step from the last grid time ``t`` to the data end, given ``x0 = D(x, t)`` (the
        final denoiser call): ``final_step`` unless a sampler uses its history there."""
        return final_step(carry.x, x0, ctx.process, t, kind)

    def nfe(self, num_steps: int) -> int:
        """Network evaluations for ``num_steps`` steps (without the final denoising step)."""
        return self.nfe_per_step * num_steps

    def expand_grid(self, process: Process, ts) -> np.ndarray:
        """The grid the scan runs (``expands_grid`` samplers insert points; others keep it)."""
        return ts

    def solve(self, denoise: Callable, process: Process, x_T: Array, t_start: float,
              t_end: float) -> tuple[Array, Array]:
        """Adaptive solvers: ``(x at t_end, nan_step)`` on a grid of their own choosing."""
        raise NotImplementedError(f"{type(self).__name__} runs on a grid; it has no solve")

    def low_nfe_warning(self, nfe: int) -> str | None:
        """A warning for running at ``nfe`` total evaluations, or ``None``."""
        return None

    def validate(self) -> None:
        """Raise ValueError for bad hyper-parameters (called before compiling)."""
        for name in self.nonnegative:
            v = getattr(self, name)
            if v < 0:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 0, got {v}")


FINAL_STEPS = ("ode", "denoise")


def final_step(x: Array, x0: Array, process: Process, t, kind: str = "ode") -> Array:
    """The last step, from ``t_min`` to the data end (``sigma = 0``), given ``x0 = D(x, t_min)``.

    ``"denoise"``: ``x0`` itself (the first-order jump of DDIM/EDM). ``"ode"``: one Euler step of
    the probability-flow ODE written in ``u = (sigma/alpha)^2`` for ``y = x/alpha``,
    ``dy/du = (y - D)/(2u)``, from ``u_min`` to 0: ``(y + x0) / 2``. In ``u`` the ODE is smooth
    down to ``u = 0`` (``dy/du = -score/2``, Tweedie), so this step's error is ``O(u_min^2)``
    where the jump's is ``O(u_min)``: it removes the accuracy floor the jump puts on every
    sampler (on a Gaussian, relative errors ``u^2/(8v^2)`` against ``u/(2v)``). Same NFE."""
    if kind == "denoise":
        return x0
    if kind != "ode":
        raise ValueError(f"unknown final step {kind!r}; valid: {', '.join(FINAL_STEPS)}")
    return 0.5 * (x / process.alpha(t) + x0)


def coeffs(process: Process, t):
    """``(alpha, sigma, lambda)`` at ``t``, with ``lambda = logsnr / 2 = log(alpha / sigma)``."""
    return process.alpha(t), process.sigma(t), 0.5 * process.logsnr(t)


def t_of_lambda(process: Process, lam):
    return process.t_of_logsnr(2.0 * lam)


def eps_hat(ctx: Context, x, t):
    """``(x0_hat, eps_hat)`` from one denoiser call."""
    a, s = ctx.process.alpha(t), ctx.process.sigma(t)
    x0 = ctx.denoise(x, t)
    return x0, eps_from_x0(x, x0, a, s)


def score(ctx: Context, x, t):
    a, s = ctx.process.alpha(t), ctx.process.sigma(t)
    return score_from_x0(x, ctx.denoise(x, t), a, s)


def pf_ode_drift(ctx: Context, x, t):
    """Probability-flow ODE ``dx/dt = f(t) x - g(t)^2 / 2 * score`` (Song et al. 2021, eq. 13)."""
    p = ctx.process
    return p.f(t) * x - 0.5 * p.g2(t) * score(ctx, x, t)


def per_example_norm(v):
    return jnp.sqrt(jnp.sum(jnp.reshape(v, (v.shape[0], -1)) ** 2, axis=1))


def ddim_transfer(x, x0, a_s, s_s, a_t, s_t):
    """The deterministic DDIM / first-order DPM-Solver map from ``s`` to ``t`` with ``x0`` fixed."""
    return a_t * x0 + (s_t / s_s) * (x - a_s * x0)


def push(history, value):
    """Shift a stacked history ``[K, ...]`` by one and put ``value`` first (for the small
    histories of scalars; arrays go in a ``ring``)."""
    return jnp.concatenate([value[None], history[:-1]], axis=0)


# The history of a multistep sampler's network outputs is a ring of ``K + 1`` slots: step ``i``
# first writes its output into slot ``i mod (K + 1)`` (in place: a dynamic-update-slice of the
# loop-carried buffer), then reads the last ``K + 1`` outputs from the updated ring. Writing before
# reading is what lets XLA update the buffer in place: shifting a stacked history (or writing into
# a slot the same step still reads) made it copy every history buffer every step, 20-40x the cost
# of a DDIM step with a trivial denoiser (bench.sampler_bench.history_overhead).

def ring(x, k: int):
    """An empty ring for ``k`` past values of ``x``'s shape (and the newest)."""
    return jnp.zeros((k + 1,) + x.shape, x.dtype)


def ring_put(buf, i, value):
    """Write step ``i``'s ``value`` (call before ``ring_get`` in the same step)."""
    return jax.lax.dynamic_update_index_in_dim(buf, value.astype(buf.dtype), i % buf.shape[0], 0)


def ring_get(buf, i, j: int):
    """The value written ``j`` steps before step ``i`` (``j = 0``: step ``i``'s own); zeros
    during warm-up."""
    return jax.lax.dynamic_index_in_dim(buf, (i - j) % buf.shape[0], 0, keepdims=False)


def ring_of(past, i: int):
    """A ring as ``ring_put`` leaves it just before step ``i`` writes: ``past[j]`` is the value
    of step ``i - 1 - j`` (newest first; to start a sampler from a known history)."""
    past = jnp.asarray(past)
    k1 = past.shape[0] + 1
    buf = jnp.zeros((k1,) + past.shape[1:], past.dtype)
    for j in range(past.shape[0]):
        buf = buf.at[(i - 1 - j) % k1].set(past[j])
    return buf
