"""Diffusion processes: ``x_t = alpha(t) * x_0 + sigma(t) * eps``.

Every process is a frozen dataclass (hashable, so it can be a static argument of ``jax.jit``)
exposing, for a time ``t`` in ``[t_min, t_max]`` (scalars or arrays, float):

* ``alpha(t)``, ``sigma(t)``: the marginal scale and noise level;
* ``logsnr(t) = log(alpha^2 / sigma^2)`` (strictly decreasing) and its inverse ``t_of_logsnr``;
* ``f(t)``, ``g2(t)``: drift and squared diffusion of the forward SDE
  ``dx = f(t) x dt + g(t) dW`` with these marginals (Song et al. 2021, eq. 5; Kingma et al. 2021,
  eq. 17): ``f = d log(alpha)/dt`` and ``g^2 = d sigma^2/dt - 2 f sigma^2``;
* ``prior_sample(key, shape)`` and ``prior_logp(x)``: the Gaussian ``N(0, sigma(t_max)^2 I)``.

``f`` and ``g2`` are derived once, by automatic differentiation, from ``alpha`` and ``sigma``: a
new process only has to define those two functions, its range and ``t_of_logsnr``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Process:
    """Base class; subclasses define ``alpha``, ``sigma``, ``t_of_logsnr``, ``t_min``, ``t_max``,
    and ``name``, their name in ``PROCESSES`` (what configs, classifiers and stored grids say)."""

    t_min: float
    t_max: float
    name: str = ""

    def alpha(self, t):
        raise NotImplementedError

    def sigma(self, t):
        raise NotImplementedError

    def logsnr(self, t):
        """``log(alpha(t)^2 / sigma(t)^2)``; strictly decreasing in ``t``."""
        return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def t_of_logsnr(self, logsnr):
        raise NotImplementedError

    def f(self, t):
        """Forward-SDE drift coefficient ``d log alpha / dt`` (the drift is ``f(t) * x``)."""
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        return _elementwise_grad(lambda s: jnp.log(self.alpha(s)))(t)

    def g2(self, t):
        """Forward-SDE squared diffusion ``d sigma^2/dt - 2 f sigma^2``."""
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        dsigma2 = _elementwise_grad(lambda s: self.sigma(s) ** 2)(t)
        return dsigma2 - 2.0 * self.f(t) * self.sigma(t) ** 2

    def check_t(self, t: float, name: str = "t") -> None:
        """Raise a ValueError naming the valid range if a Python float ``t`` is outside it."""
        if not (self.t_min - 1e-9 <= float(t) <= self.t_max + 1e-9):
            raise ValueError(
                f"{name}={t} is outside {type(self).__name__}'s time range "
                f"[t_min={self.t_min}, t_max={self.t_max}]"
            )

    def prior_sample(self, key: Array, shape, dtype=jnp.float32) -> Array:
        """A draw from the prior ``N(0, sigma(t_max)^2 I)``."""
        return self.sigma(self.t_max) * jax.random.normal(key, shape, dtype)

    def prior_logp(self, x: Array) -> Array:
        """Log-density of the prior, summed over all but the leading (batch) axis."""
        s = self.sigma(self.t_max)
        d = math.prod(x.shape[1:])
        sq = jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=1)
        return -0.5 * sq / s**2 - d * (jnp.log(s) + 0.5 * math.log(2 * math.pi))

    def marginal(self, x0: Array, t, eps: Array) -> Array:
        """``alpha(t) x0 + sigma(t) eps`` with ``t`` of shape [] or [B]."""
        a, s = _bcast(self.alpha(t), x0), _bcast(self.sigma(t), x0)
        return a * x0 + s * eps


def _elementwise_grad(fn):
    return jnp.vectorize(jax.grad(fn))


def _bcast(v, x):
    """Reshape a [] or [B] array of per-example scalars to broadcast against ``x`` [B, ...]."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else v


@dataclasses.dataclass(frozen=True)
class VP(Process):
    """Variance-preserving process (DDPM, Ho et al. 2020; Song et al. 2021), ``alpha^2+sigma^2=1``.

    ``schedule='linear'``: ``log alpha(t) = -t^2 (beta_max-beta_min)/4 - t beta_min/2``.
    ``schedule='cosine'``: ``alpha(t) = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s))`` (Nichol &
    Dhariwal 2021), clipped at ``t_max=0.9946`` where it would reach zero (as DPM-Solver does).
    """

    @property
    def name(self) -> str:
        return f"vp_{self.schedule}"

    schedule: Literal["linear", "cosine"] = "linear"
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_s: float = 0.008
    t_min: float = 1e-3
    t_max: float = 1.0

    @classmethod
    def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> "VP":
        return cls("linear", beta_min=beta_min, beta_max=beta_max, t_min=t_min)

    @classmethod
    def cosine(cls, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946) -> "VP":
        return cls("cosine", cosine_s=s, t_min=t_min, t_max=t_max)

    def __post_init__(self):
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"VP schedule {self.schedule!r} is not one of 'linear', 'cosine'")
        if not 0 < self.t_min < self.t_max <= 1:
            raise ValueError(f"need 0 < t_min < t_max <= 1, got {self.t_min}, {self.t_max}")

    def log_alpha(self, t):
        if self.schedule == "linear":
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        s = self.cosine_s
        return jnp.log(jnp.cos(0.5 * jnp.pi * (t + s) / (1 + s))) - math.log(
            math.cos(0.5 * math.pi * s / (1 + s))
        )

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def logsnr(self, t):
        la2 = 2.0 * self.log_alpha(t)
        return la2 - jnp.log(-jnp.expm1(la2))

    def t_of_logsnr(self, logsnr):
        log_alpha = -0.5 * jax.nn.softplus(-logsnr)
        return self._t_of_log_alpha(log_alpha)

    def _t_of_log_alpha(self, log_alpha):
        if self.schedule == "linear":
            b0, db = self.beta_min, self.beta_max - self.beta_min
            # Solve db/4 t^2 + b0/2 t + log_alpha = 0 for t >= 0 (stable form of the root).
            return -2.0 * log_alpha / (0.5 * b0 + jnp.sqrt(0.25 * b0**2 - db * log_alpha))
        s = self.cosine_s
        c0 = math.log(math.cos(0.5 * math.pi * s / (1 + s)))
        return 2.0 * (1 + s) / jnp.pi * jnp.arccos(jnp.exp(log_alpha + c0)) - s


@dataclasses.dataclass(frozen=True)
class SubVP(Process):
    """Sub-VP process (Song et al. 2021, eq. 29): ``alpha`` of VP-linear, ``sigma = 1 - alpha^2``."""

    name = "subvp"

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    @property
    def _vp(self) -> VP:
        return VP.linear(self.beta_min, self.beta_max, self.t_min)

    def alpha(self, t):
        return self._vp.alpha(t)

    def sigma(self, t):
        return -jnp.expm1(2.0 * self._vp.log_alpha(t))

    def t_of_logsnr(self, logsnr):
        # logsnr = log a - 2 log(1 - a) with a = alpha^2: root of E a^2 - (2E+1) a + E = 0.
        e = jnp.exp(logsnr)
        a = 2.0 * e / ((2 * e + 1) + jnp.sqrt(4 * e + 1))
        return self._vp._t_of_log_alpha(0.5 * jnp.log(a))


@dataclasses.dataclass(frozen=True)
class VE(Process):
    """Variance-exploding process (NCSN; Song et al. 2021): ``alpha=1``,
    ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``."""

    name = "ve"

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_of_logsnr(self, logsnr):
        return (-0.5 * logsnr - math.log(self.sigma_min)) / math.log(
            self.sigma_max / self.sigma_min
        )


@dataclasses.dataclass(frozen=True)
class EDM(Process):
    """EDM process (Karras et al. 2022): ``alpha=1``, ``sigma=t``, ``t`` in ``[0.002, 80]``."""

    name = "edm"

    t_min: float = 0.002
    t_max: float = 80.0

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def sigma(self, t):
        return jnp.asarray(t, dtype=jnp.result_type(float))

    def t_of_logsnr(self, logsnr):
        return jnp.exp(-0.5 * logsnr)


@dataclasses.dataclass(frozen=True)
class Flow(Process):
    """Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022):
    ``alpha = 1 - t``, ``sigma = t``. ``t_max`` stays below 1 so that ``logsnr`` is finite."""

    name = "flow"

    t_min: float = 1e-3
    t_max: float = 0.999

    def alpha(self, t):
        return 1.0 - t

    def sigma(self, t):
        return jnp.asarray(t, dtype=jnp.result_type(float))

    def t_of_logsnr(self, logsnr):
        return jax.nn.sigmoid(-0.5 * logsnr)


def iddpm_sigmas(m: int = 1000, c1: float = 0.001, c2: float = 0.008) -> np.ndarray:
    """EDM's iDDPMPrecond noise levels ``u[0] > ... > u[M] = 0`` (Karras et al. 2022, App. C.3.4:
    the improved-DDPM cosine schedule with its steps' ratios clipped at ``c1``)."""
    alpha_bar = lambda j: np.sin(0.5 * np.pi * j / m / (c2 + 1)) ** 2
    u = np.zeros(m + 1)
    for j in range(m, 0, -1):
        u[j - 1] = np.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), c1) - 1)
    return u


def discrete_betas(kind: str, num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """DDPM beta schedules: ``linear`` (Ho et al.), ``scaled_linear`` (quadratic in sqrt beta,
    Stable Diffusion), ``cosine`` (Nichol & Dhariwal, betas clipped at 0.999), ``iddpm`` (EDM's
    iDDPMPrecond levels: timestep ``n`` at ``sigma = u[N-1-n]``; the beta range is unused)."""
    n = num_timesteps
    if kind == "iddpm":
        abar = 1.0 / (1.0 + iddpm_sigmas(n)[:n][::-1] ** 2)
        return 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
    if kind == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64)
    if kind == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
    if kind == "cosine":
        s = 0.008
        steps = np.arange(n + 1, dtype=np.float64) / n
        abar = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
        return np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)
    raise ValueError(f"unknown beta schedule {kind!r}; valid: 'linear', 'scaled_linear', 'cosine', "
                     "'iddpm'")


@dataclasses.dataclass(frozen=True)
class DiscreteVP(Process):
    """A DDPM schedule of ``N`` betas as a continuous VP process (Lu et al. 2022a, App. D).

    Discrete step ``n`` (0-based, as in DDPM code) sits at ``t = (n + 1) / N``; ``log alpha`` is
    interpolated linearly in ``t`` between those points, so every continuous-time sampler runs
    on a model trained with integer timesteps. Use ``timestep(t)`` to recover ``n``.
    """

    name = "discrete_vp"

    betas: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    @property
    def t_min(self) -> float:
        return 1.0 / self.num_timesteps

    @property
    def t_max(self) -> float:
        return 1.0

    @functools.cached_property
    def _table(self):
        betas = discrete_betas(self.betas, self.num_timesteps, self.beta_start, self.beta_end)
        log_alpha = 0.5 * np.cumsum(np.log1p(-betas))
        ts = np.arange(1, self.num_timesteps + 1, dtype=np.float64) / self.num_timesteps
        return ts, log_alpha

    def log_alpha(self, t):
        ts, la = self._table
        dtype = jnp.result_type(float)
        return jnp.interp(t, jnp.asarray(ts, dtype), jnp.asarray(la, dtype))

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def t_of_logsnr(self, logsnr):
        ts, la = self._table
        dtype = jnp.result_type(float)
        # log alpha is piecewise linear in t, so inverting it is an exact piecewise-linear interp.
        target = -0.5 * jax.nn.softplus(-logsnr)
        return jnp.interp(target, jnp.asarray(la[::-1], dtype), jnp.asarray(ts[::-1], dtype))

    def timestep(self, t):
        """The 0-based integer DDPM timestep nearest to ``t``."""
        return jnp.clip(jnp.round(t * self.num_timesteps) - 1, 0, self.num_timesteps - 1).astype(
            jnp.int32
        )


PROCESSES = {
    "vp_linear": VP.linear,
    "vp_cosine": VP.cosine,
    "subvp": SubVP,
    "ve": VE,
    "edm": EDM,
    "flow": Flow,
    "discrete_vp": DiscreteVP,
}


def make_process(name: str, **kwargs) -> Process:
    """Build a process from its table name (used by configs and the CLI)."""
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; valid: {sorted(PROCESSES)}")
    return PROCESSES[name](**kwargs)
