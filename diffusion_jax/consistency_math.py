"""Consistency models (Song et al. 2023; Song & Dhariwal 2023): a network ``f(x_t, t)`` that maps
every point of a probability-flow ODE trajectory to the trajectory's data end, so that one
evaluation samples and a few evaluations refine.

For any process (VP, VE, ...) the function works in EDM coordinates ``y = x / alpha`` and
``s = sigma / alpha``. Song et al. write ``f = c_skip(s) y + c_out(s) F`` with the EDM scalings
shifted by ``s_min`` (``c_skip = s_d^2 / ((s - s_min)^2 + s_d^2)``, ``c_out = s_d (s - s_min) /
sqrt(s_d^2 + s^2)``). Here the network is a denoiser ``D`` (the project's parameterisation, so a
student starts as its teacher), and ``F`` is the EDM network output that ``D`` implies,
``F = (D - c_skip^EDM(s) y) / c_out^EDM(s)``; substituted,

    f = (c_skip(s) - r(s) c_skip^EDM(s)) y + r(s) D,    r = c_out(s) / c_out^EDM(s) in [0, 1],

with no division by a small number. ``f(x, t_min) = x / alpha(t_min)`` exactly (the boundary
condition: ``r = 0``) and ``f = D`` at high noise. Why not ``c_skip y + (1 - c_skip) D``: ``1 -
c_skip`` vanishes quadratically in ``s - s_min`` where ``c_out`` vanishes linearly, so at the
noise levels multistep sampling revisits the student's ``D`` had to be ~1/(1 - c_skip) times its
teacher's (7x at ``s = 0.2``, 100x at ``s = 0.05``) and more steps made samples worse; on the
ring (4000 CD steps, re-noising from ``s = 0.8``) this form took the 1-step mean log-density
from -14.9 to -8.4 and the 4-step one from -42.6 to -4.0 (``tests/test_consistency.py`` asserts
that the exact map needs a near-exact denoiser here, and that more steps improve on one).

    f = consistency_function(denoise, process)                    # f(x, t) -> x0
    loss = distillation_loss(f_student, f_target, teacher_denoise, process, x0, ts, key)
    x = multistep_sample(f, process, x_T, sample_times(process, 2), key)   # 2 evaluations

``distillation_loss`` uses the project's samplers for the teacher's one ODE step (``heun``: 2
teacher evaluations; ``ddim``: 1). ``training_loss`` is consistency training without a teacher
(iCT): the same noise at two adjacent levels, pseudo-Huber distance, lognormal level sampling and
a step-count curriculum.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.processes import Process
from diffusion_jax.samplers import resolve_sampler
from diffusion_jax.samplers import run as run_sampler

SIGMA_DATA = 0.5
CONSISTENCY_LOSSES = ("l2", "pseudo_huber")


def _b(v, x):
    v = jnp.asarray(v, x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else v


def edm_sigma(process: Process, t):
    """``s = sigma(t) / alpha(t)``: the noise level of ``y = x / alpha``."""
    return process.sigma(t) / process.alpha(t)


def t_of_edm_sigma(process: Process, s):
    return process.t_of_logsnr(-2.0 * jnp.log(s))


def consistency_function(denoise: Callable, process: Process, sigma_data: float = SIGMA_DATA):
    """``f(x, t, *args) -> x0`` from a denoiser ``denoise(x, t, *args)``; exact identity (in ``y``)
    at ``process.t_min``."""
    with jax.ensure_compile_time_eval():  # a constant, also when built inside a trace
        s_min = float(edm_sigma(process, jnp.asarray(process.t_min)))

    sd2 = sigma_data ** 2

    def f(x, t, *args, **kwargs):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        s = edm_sigma(process, t)
        d = s - s_min
        c_skip, c_skip_edm = sd2 / (d * d + sd2), sd2 / (s * s + sd2)
        r = (d / s) * jnp.sqrt((s * s + sd2) / (d * d + sd2))  # c_out / c_out^EDM
        y = x / _b(process.alpha(t), x)
        return _b(c_skip - r * c_skip_edm, x) * y + _b(r, x) * denoise(x, t, *args, **kwargs)

    return f


def distance(a, b, kind: str = "l2", c: float | None = None):
    """Per-example ``||a - b||^2 / D`` (``l2``) or pseudo-Huber ``sqrt(||a - b||^2 + c^2) - c``
    (``c`` default ``0.00054 sqrt(D)``, iCT)."""
    d = math.prod(a.shape[1:])
    sq = jnp.sum(((a - b) ** 2).reshape(a.shape[0], -1), axis=-1)
    if kind == "l2":
        return sq / d
    if kind != "pseudo_huber":
        raise ValueError(f"unknown consistency loss {kind!r}; valid: {', '.join(CONSISTENCY_LOSSES)}")
    c = 0.00054 * math.sqrt(d) if c is None else c
    return jnp.sqrt(sq + c * c) - c


def distillation_loss(f_student: Callable, f_target: Callable, teacher_denoise: Callable,
                      process: Process, x0, ts, key, solver: str = "heun", kind: str = "l2",
                      args: tuple = ()):
    """Consistency distillation on the grid ``ts`` (decreasing, ``ts[-1] = t_min``): for each
    example a random adjacent pair ``t_n > t_{n+1}``, ``x_{t_n} ~ q(x_t | x0)``, the teacher's
    one ODE step to ``t_{n+1}`` with the project sampler ``solver`` (vmapped over examples, so
    every example has its own pair), and the distance between ``f_student(x_{t_n}, t_n)`` and
    the stop-gradient ``f_target(x_{t_{n+1}}, t_{n+1})``. ``args``: per-example arrays (class
    labels) every network call takes after ``(x, t)``. Returns ``(loss, mean n)``."""
    ts = jnp.asarray(ts, x0.dtype)
    k_n, k_e, k_s = jax.random.split(key, 3)
    b = x0.shape[0]
    n = jax.random.randint(k_n, (b,), 0, ts.shape[0] - 1)
    t, t_next = ts[n], ts[n + 1]
    noise = jax.random.normal(k_e, x0.shape, x0.dtype)
    x_t = _b(process.alpha(t), x0) * x0 + _b(process.sigma(t), x0) * noise
    obj = resolve_sampler(solver)

    def one_step(x, t0, t1, k, *a):
        denoise = lambda x_, t_: teacher_denoise(x_, t_, *(v[None] for v in a))
        return run_sampler(obj, denoise, process, x[None], jnp.stack([t0, t1]), k,
                           final_denoise=False)[0][0]

    x_next = jax.vmap(one_step)(x_t, t, t_next, jax.random.split(k_s, b), *args)
    target = jax.lax.stop_gradient(f_target(jax.lax.stop_gradient(x_next), t_next, *args))
    return (jnp.mean(distance(f_student(x_t, t, *args), target, kind)),
            jnp.mean(n.astype(x0.dtype)))


def ct_num_scales(step, total_steps: int, s0: int = 10, s1: int = 1280):
    """iCT's curriculum: ``N(k) = min(s0 2^floor(k / K'), s1) + 1`` with
    ``K' = floor(K / (log2(s1 / s0) + 1))`` (traced in ``step``)."""
    k_prime = max(1, math.floor(total_steps / (math.log2(s1 / s0) + 1)))
    return jnp.minimum(s0 * 2 ** (step // k_prime), s1) + 1


def karras_sigmas(num, s_min, s_max, rho: float = 7.0, size: int | None = None):
    """``num`` EDM sigmas increasing from ``s_min`` to ``s_max`` (Karras spacing; ``num`` may be
    traced: the array has ``size`` entries, those past ``num`` repeat ``s_max``)."""
    size = size or int(num)
    i = jnp.minimum(jnp.arange(size), num - 1)
    a, b = s_min ** (1 / rho), s_max ** (1 / rho)
    return (a + i / (num - 1) * (b - a)) ** rho


def training_loss(f_student: Callable, process: Process, x0, step, key, total_steps: int,
                  s0: int = 10, s1: int = 1280, kind: str = "pseudo_huber",
                  p_mean: float = -1.1, p_std: float = 2.0, args: tuple = ()):
    """Consistency training (iCT, no teacher): ``N(step)`` Karras levels, a pair ``n`` drawn with
    lognormal weight, ``x0 + s eps`` at both levels with the same ``eps``, the target
    ``f(x_{s_n})`` with the current parameters under ``stop_gradient``, weight ``1/(s_{n+1} -
    s_n)``. Returns ``(loss, num_scales)``."""
    tmin, tmax = jnp.asarray(process.t_min), jnp.asarray(process.t_max)
    s_min, s_max = edm_sigma(process, tmin), edm_sigma(process, tmax)
    num = ct_num_scales(step, total_steps, s0, s1)
    sig = karras_sigmas(num, s_min, s_max, size=s1 + 1)  # increasing: sig[0] = s_min
    erf = jax.scipy.special.erf
    cdf = lambda s: erf((jnp.log(s) - p_mean) / (math.sqrt(2.0) * p_std))
    w = cdf(sig[1:]) - cdf(sig[:-1])
    w = jnp.where(jnp.arange(s1) < num - 1, w, 0.0)
    k_n, k_e = jax.random.split(key)
    n = jax.random.categorical(k_n, jnp.log(jnp.maximum(w, 1e-30)))
    s_lo, s_hi = sig[n], sig[n + 1]
    t_lo, t_hi = t_of_edm_sigma(process, s_lo), t_of_edm_sigma(process, s_hi)
    eps = jax.random.normal(k_e, x0.shape, x0.dtype)
    x_hi = process.alpha(t_hi) * (x0 + s_hi * eps)
    x_lo = process.alpha(t_lo) * (x0 + s_lo * eps)
    target = jax.lax.stop_gradient(f_student(x_lo, t_lo, *args))
    d = distance(f_student(x_hi, t_hi, *args), target, kind)
    return jnp.mean(d / (s_hi - s_lo)), num


def ect_gap(s_t, step, total_steps: int, q: float = 2.0, stages: int = 8):
    """ECT's second level ``s_r < s_t`` (Geng et al. 2024): ``s_r = s_t (1 - n(s_t) / q^k)`` with
    ``n(s) = 1 + 8 sigmoid(-s)`` and ``k = ceil(stages * step / total_steps)``, clipped at 0: at
    step 0 ``s_r = 0`` (the target is the data: the pretrained model's own denoising objective),
    and the gap shrinks by ``q`` each of the ``stages`` stages towards continuous time."""
    k = jnp.ceil(stages * step / total_steps)
    return jnp.maximum(s_t * (1.0 - (1.0 + 8.0 * jax.nn.sigmoid(-s_t)) / q**k), 0.0)


def ect_loss(f_student: Callable, process: Process, x0, step, key, total_steps: int,
             kind: str = "pseudo_huber", q: float = 2.0, stages: int = 8,
             p_mean: float = -1.1, p_std: float = 2.0, args: tuple = ()):
    """Easy consistency tuning (ECT, Geng et al. 2024), for a student initialised from a
    diffusion model: ``s_t`` lognormal, ``s_r = ect_gap(s_t)``, both levels with the same
    ``eps``, the target ``f(x_r)`` under ``stop_gradient`` (the data itself where ``s_r`` is
    below the process's range), weight ``1 / (s_t - s_r)``. Returns ``(loss, mean s_r / s_t)``."""
    s_min = edm_sigma(process, jnp.asarray(process.t_min))
    s_max = edm_sigma(process, jnp.asarray(process.t_max))
    k_s, k_e = jax.random.split(key)
    n = x0.shape[0]
    s_t = jnp.clip(jnp.exp(p_mean + p_std * jax.random.normal(k_s, (n,))), s_min * 1.5, s_max)
    s_r = ect_gap(s_t, step, total_steps, q, stages)
    at_data = s_r < s_min
    s_r_in = jnp.maximum(s_r, s_min)
    t_t, t_r = t_of_edm_sigma(process, s_t), t_of_edm_sigma(process, s_r_in)
    eps = jax.random.normal(k_e, x0.shape, x0.dtype)
    x_t = _b(process.alpha(t_t), x0) * (x0 + _b(s_t, x0) * eps)
    x_r = _b(process.alpha(t_r), x0) * (x0 + _b(s_r_in, x0) * eps)
    target = jax.lax.stop_gradient(jnp.where(_b(at_data, x0), x0, f_student(x_r, t_r, *args)))
    d = distance(f_student(x_t, t_t, *args), target, kind)
    return jnp.mean(d / (s_t - jnp.where(at_data, 0.0, s_r_in))), jnp.mean(s_r / s_t)


def sample_times(process: Process, steps: int, s_first: float = 0.4, s_last: float = 0.05):
    """The ``steps`` times a multistep consistency sampler evaluates at: ``t_max``, then (for
    ``steps >= 2``) EDM noise levels ``s`` spaced geometrically from ``s_first`` down to
    ``s_last``; levels outside the process's range are clipped to it. Song et al. 2023 use
    ``s = 0.821`` for the second of two steps on CIFAR-10; measured here, 0.4 is better on both
    problems we have: Fashion-MNIST CD (FD of 2 steps 129.0 / 128.1 / 118.6 / 120.4 at s_first =
    1.2 / 0.8 / 0.4 / 0.2, README) and the ring (mean log-density of 2 steps -8.7 at 0.8, -3.9 at
    0.4, -4.7 at 0.2)."""
    if steps < 1:
        raise ValueError(f"a consistency model samples in >= 1 steps, got {steps}")
    with jax.ensure_compile_time_eval():
        lo = float(edm_sigma(process, jnp.asarray(process.t_min)))
        hi = float(edm_sigma(process, jnp.asarray(process.t_max)))
        s = np.geomspace(s_first, s_last, steps - 1) if steps > 1 else np.zeros(0)
        s = np.clip(s, lo * 1.0001, hi * 0.9999)
        ts = [float(t_of_edm_sigma(process, jnp.asarray(v))) for v in s]
    return np.array([process.t_max] + ts)


def multistep_sample(f: Callable, process: Process, x_T, ts, key, args: tuple = ()):
    """``x = f(x_T, ts[0])``, then for each later ``t``: re-noise ``x`` to ``t`` and map back
    (Song et al. 2023, Algorithm 1). ``len(ts)`` network evaluations (each takes ``args``)."""
    ts = np.asarray(ts)
    x = f(x_T, ts[0], *args)
    for i, t in enumerate(ts[1:]):
        z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        x = f(process.alpha(t) * x + process.sigma(t) * z, t, *args)
    return x
