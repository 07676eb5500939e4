"""One ``lax.scan`` driver for every fixed-grid sampler, and ``sample``, the public entry point."""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.processes import Process
from diffusion_jax.samplers.base import FINAL_STEPS, Context, Sampler, final_step  # noqa: F401
from diffusion_jax.samplers.grids import default_grid, make_grid
from diffusion_jax.samplers.registry import SAMPLERS

Array = jax.Array


def run(sampler: Sampler, denoise: Callable, process: Process, x_T: Array, ts, key: Array,
        final_denoise: bool = True, final: str = "ode", unroll: int | bool = 1,
        callback: Callable | None = None, calls=None) -> tuple[Array, Array]:
    """Run ``sampler`` over the grid ``ts`` (length ``N+1``) from ``x_T``: one ``lax.scan``.

    Returns ``(x, nan_step)``: the sample (with ``final_denoise``, one more network call at
    ``t_min`` and the ``final`` step to the data end, see ``final_step``; without, ``x_{t_min}``)
    and the first step whose output held a NaN (``-1`` if none; ``N`` means the final step).
    Traceable: call it inside ``jax.jit``. ``unroll`` is ``lax.scan``'s (``True``: a straight
    line of steps; ``optimize_grid`` differentiates through it, which XLA:CPU runs several times
    faster unrolled than as a loop of convolutions).

    ``callback(i, t, x, x0_hat)`` (k-diffusion's per-step callback) is called on the host at
    every network evaluation, with the step index ``i`` (``N`` for the final call), the time and
    the denoiser's input and output: for trajectory plots and debugging. Absent, nothing is
    added to the program.

    ``calls`` (a boolean per step, see ``cache_schedule``): step caching. At a step marked
    False the network is not called: the step reuses the noise prediction of the last call,
    ``eps = (x - alpha x0_hat) / sigma``, at its own ``x`` and ``t`` (TeaCache/MagCache's
    reuse of the model output, on a fixed schedule); the rest of the sampler runs as usual.
    The choice is a ``lax.cond`` inside the one scan, so a skipped step costs no network call.
    """
    if calls is not None:
        return _run_cached(sampler, denoise, process, x_T, ts, key, final_denoise, final, calls,
                           callback)
    if sampler.adaptive:  # adaptive solvers choose their own grid
        watched = _watched(denoise, callback, jnp.int32(0))
        x, nan_step = sampler.solve(watched, process, x_T, float(ts[0]), float(ts[-1]))
    else:
        if sampler.expands_grid:  # Restart: the restart cycles join the grid
            if isinstance(ts, jax.core.Tracer):
                raise ValueError(f"{type(sampler).__name__} inserts its restart cycles into a "
                                 "concrete grid; it cannot run on a traced (learned) grid")
            ts = sampler.expand_grid(process, np.asarray(ts))
        ts = jnp.asarray(ts, dtype=x_T.dtype)
        n = ts.shape[0] - 1

        def body(state, inp):
            carry, nan_step = state
            i, t, t_next, k = inp
            ctx = Context(_watched(denoise, callback, i), process, n)
            carry = sampler.step(ctx, carry, i, t, t_next, k)
            bad = jnp.any(jnp.isnan(carry.x))
            return (carry, jnp.where((nan_step < 0) & bad, i.astype(jnp.int32), nan_step)), None

        keys = jax.random.split(key, n)
        init = (sampler.init(Context(denoise, process, n), x_T), jnp.int32(-1))
        (carry, nan_step), _ = jax.lax.scan(body, init, (jnp.arange(n), ts[:-1], ts[1:], keys),
                                            unroll=unroll)
        x = carry.x
    if final_denoise:
        n = len(ts) - 1
        t_end = jnp.asarray(ts[-1], x.dtype)
        x0 = _watched(denoise, callback, jnp.int32(n))(x, t_end)
        x = (final_step(x, x0, process, t_end, final) if sampler.adaptive
             else sampler.finish(Context(denoise, process, n), carry, x0, t_end, final))
        nan_step = jnp.where((nan_step < 0) & jnp.any(jnp.isnan(x)), n, nan_step)
    return x, nan_step


def cache_schedule(num_steps: int, every: int) -> tuple[bool, ...]:
    """Where the network runs with step caching: steps ``0, every, 2 every, ...`` (the first
    always); the final denoising call always runs."""
    if every < 1:
        raise ValueError(f"cache_every must be >= 1 (1: no caching), got {every}")
    return tuple(bool(i % every == 0) for i in range(num_steps))


def check_cacheable(sampler: Sampler, name) -> None:
    """Step caching replaces a step's one network call: samplers with several per step (Heun,
    DPM-Solver-2/3, Restart) or their own grid (dopri5) are refused."""
    if sampler.adaptive or sampler.expands_grid or sampler.nfe_per_step != 1:
        raise ValueError(f"--cache-every reuses a step's one network call; sampler {name} makes "
                         f"{'its own grid' if sampler.adaptive or sampler.expands_grid else f'{sampler.nfe_per_step} calls per step'}: "
                         "use a one-call sampler (ddim, dpmpp_2m, unipc, deis, plms, ...)")


def _calls(obj: Sampler, sampler, num_steps: int, cache_every: int):
    """``sample``'s cache schedule (``None``: no caching), the sampler checked for it."""
    if cache_every == 1:
        return None
    check_cacheable(obj, sampler if isinstance(sampler, str) else type(obj).__name__)
    return cache_schedule(num_steps, cache_every)


def _run_cached(sampler, denoise, process, x_T, ts, key, final_denoise, final, calls, callback):
    """``run`` with step caching (``calls[i]``: the network runs at step ``i``)."""
    check_cacheable(sampler, type(sampler).__name__)
    ts = jnp.asarray(ts, dtype=x_T.dtype)
    n = ts.shape[0] - 1
    if len(calls) != n or not calls[0]:
        raise ValueError(f"a cache schedule has one entry per step ({n}) and calls the network at "
                         f"the first step; got {tuple(calls)}")

    def body(state, inp):
        carry, nan_step, eps_last = state
        i, t, t_next, k, call = inp
        made = []

        def cached(x, t_):
            a, s = process.alpha(t_), process.sigma(t_)

            def fresh(_):
                x0 = _watched(denoise, callback, i)(x, t_)
                return x0, (x - a * x0) / s

            x0, eps = jax.lax.cond(call, fresh, lambda _: ((x - s * eps_last) / a, eps_last), None)
            made.append(eps)
            return x0

        carry = sampler.step(Context(cached, process, n), carry, i, t, t_next, k)
        bad = jnp.any(jnp.isnan(carry.x))
        return (carry, jnp.where((nan_step < 0) & bad, i.astype(jnp.int32), nan_step),
                made[-1]), None

    keys = jax.random.split(key, n)
    init = (sampler.init(Context(denoise, process, n), x_T), jnp.int32(-1), jnp.zeros_like(x_T))
    (carry, nan_step, _), _ = jax.lax.scan(
        body, init, (jnp.arange(n), ts[:-1], ts[1:], keys, jnp.asarray(calls)))
    x = carry.x
    if final_denoise:
        t_end = ts[-1]
        x0 = _watched(denoise, callback, jnp.int32(n))(x, t_end)
        x = sampler.finish(Context(denoise, process, n), carry, x0, t_end, final)
        nan_step = jnp.where((nan_step < 0) & jnp.any(jnp.isnan(x)), n, nan_step)
    return x, nan_step


def _watched(denoise: Callable, callback: Callable | None, i) -> Callable:
    """``denoise`` that also reports ``(i, t, x, x0_hat)`` to ``callback`` on the host."""
    if callback is None:
        return denoise

    def reported(x, t):
        x0 = denoise(x, t)
        jax.debug.callback(callback, i, t, x, x0)
        return x0

    return reported


def resolve_sampler(sampler: str | Sampler, **kwargs) -> Sampler:
    if isinstance(sampler, Sampler):
        if kwargs:
            raise ValueError("sampler options are given as the sampler object's fields, not kwargs")
        obj = sampler
    elif sampler in SAMPLERS:
        obj = SAMPLERS[sampler](**kwargs)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    obj.validate()
    return obj


def sample(denoise: Callable, process: Process, x_T: Array, *, sampler: str | Sampler = "dpmpp_2m",
           num_steps: int = 20, key: Array | None = None, grid: str = "default",
           ts=None, final_denoise: bool = True, final: str = "ode",
           sampler_kwargs: dict | None = None, callback: Callable | None = None,
           cache_every: int = 1) -> Array:
    """Draw samples by integrating from ``x_T`` (at ``t_max``) down to ``t_min``.

    Args:
      denoise: ``denoise(x [B,...], t []) -> x0_hat [B,...]``; a pure function (bind parameters
        with ``functools.partial`` or a closure).
      process: the diffusion process the denoiser was trained for.
      x_T: ``[B, ...]`` initial noise, e.g. ``process.prior_sample(key, shape)``.
      sampler: a name in ``SAMPLERS`` or a sampler object.
      num_steps: steps along the grid (NFE = ``sampler.nfe(num_steps) + final_denoise``).
      key: PRNG key for stochastic samplers (default: key 0).
      grid: a name in ``GRIDS``, or ``"default"`` (the sampler's measured best,
        ``DEFAULT_GRIDS``); or give ``ts`` (decreasing times) explicitly.
      final: the step from ``t_min`` to the data end: ``"ode"`` (second order in
        ``(sigma/alpha)^2``, the default) or ``"denoise"`` (the first-order jump ``x0_hat``).
      callback: ``callback(i, t, x, x0_hat)`` at every network evaluation (see ``run``).
      cache_every: step caching (see ``run``): the network runs at every ``cache_every``-th
        step, the others reuse its last noise prediction; NFE = ``ceil(num_steps /
        cache_every) + final_denoise`` (``total_nfe(..., cache_every=)``). 1: no caching.

    Jittable as a whole (``jax.jit(partial(sample, ...))``). Called outside ``jit`` it compiles
    once per (denoiser, process, sampler, grid, shape) and raises ``FloatingPointError`` naming
    the step where the denoiser produced a NaN.
    """
    obj = resolve_sampler(sampler, **(sampler_kwargs or {}))
    if final not in FINAL_STEPS:
        raise ValueError(f"unknown final step {final!r}; valid: {', '.join(FINAL_STEPS)}")
    ts = _checked_grid(obj, process, sampler, num_steps, grid, ts)
    calls = _calls(obj, sampler, len(ts) - 1, cache_every)
    # Restart's cycles join the grid (a grid it cannot restart on fails here, before compiling);
    # NaN steps are reported on the grid the scan runs
    run_ts = obj.expand_grid(process, ts)
    nfe = (None if obj.adaptive else obj.nfe(len(ts) - 1) + int(final_denoise) if calls is None
           else sum(calls) + int(final_denoise))
    warning = None if nfe is None else obj.low_nfe_warning(nfe)
    if warning:
        warnings.warn(warning, stacklevel=2)
    key = jax.random.key(0) if key is None else key
    out = jax.eval_shape(denoise, x_T, jnp.asarray(ts[0], x_T.dtype))  # traces, never compiles
    if out.shape != x_T.shape:
        raise ValueError(f"the denoiser maps x_T of shape {x_T.shape} to {out.shape}; "
                         "it must return x0_hat with the shape of its input")
    if isinstance(x_T, jax.core.Tracer) or isinstance(key, jax.core.Tracer):
        return run(obj, denoise, process, x_T, ts, key, final_denoise, final, callback=callback,
                   calls=calls)[0]
    x, nan_step = _run_jit(obj, denoise, process, x_T, tuple(float(v) for v in ts), key,
                           final_denoise, final, callback, calls)
    nan_step = int(nan_step)
    if nan_step >= 0:
        m = len(run_ts) - 1
        where = "the final denoising step" if nan_step == m else f"step {nan_step} of {m}"
        raise FloatingPointError(
            f"sampler {type(obj).__name__} produced NaN at {where} "
            f"(t={run_ts[min(nan_step, m)]:.4g}): check the denoiser's output at that time")
    return x


def invert(denoise: Callable, process: Process, x0: Array, *, sampler: str | Sampler = "ddim",
           num_steps: int = 50, grid: str = "default", ts=None) -> Array:
    """DDIM / PF-ODE inversion: the noise ``x_T`` from which ``sample`` (same denoiser, sampler
    and grid) regenerates ``x0``. The deterministic ``sampler`` runs up the grid, from
    ``t_min`` (where ``x0`` stands for ``x_{t_min}``) to ``t_max``: ``num_steps`` steps, the
    sampler's NFE without the final denoising call. Its error, like the sampler's, falls with
    the number of steps; conditioning and guidance are the denoiser's (a guided denoiser
    inverts less faithfully than the conditional one). Jittable."""
    obj = resolve_sampler(sampler)
    if obj.stochastic or obj.adaptive or obj.expands_grid:
        raise ValueError(f"inversion runs a deterministic sampler on a fixed grid; "
                         f"{type(obj).__name__} is {'stochastic' if obj.stochastic else 'adaptive' if obj.adaptive else 'a restart sampler'}: "
                         "use ddim, dpmpp_2m, unipc, heun, ...")
    ts = _checked_grid(obj, process, sampler, num_steps, grid, ts)
    return run(obj, denoise, process, x0, np.asarray(ts)[::-1].copy(), jax.random.key(0),
               final_denoise=False)[0]


def _checked_grid(obj: Sampler, process: Process, sampler, num_steps: int, grid, ts) -> np.ndarray:
    """The grid ``sample`` runs: ``ts`` checked, or made from ``grid`` and ``num_steps``."""
    if ts is None:
        ts = make_grid(process, num_steps, default_grid(sampler) if grid == "default" else grid)
    else:
        ts = np.asarray(ts, dtype=np.float64)
        if ts.ndim != 1 or len(ts) < 2 or np.any(np.diff(ts) >= 0):
            raise ValueError("ts must be a 1-D strictly decreasing array of at least 2 times")
        for v in (ts[0], ts[-1]):
            process.check_t(v)
    n = len(ts) - 1
    if n < obj.min_steps:
        raise ValueError(f"sampler {type(obj).__name__} needs at least {obj.min_steps} steps, "
                         f"got {n}")
    return ts


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 4, 6, 7, 8, 9))
def _run_jit(sampler, denoise, process, x_T, ts, key, final_denoise, final, callback, calls):
    return run(sampler, denoise, process, x_T, np.asarray(ts), key, final_denoise, final,
               callback=callback, calls=calls)


def total_nfe(sampler: str | Sampler, num_steps: int, final_denoise: bool = True,
              cache_every: int = 1) -> int:
    """Network evaluations of ``num_steps`` steps, the final denoising call included; with
    step caching, the calls ``cache_schedule`` makes (a skipped step costs none)."""
    if cache_every != 1:
        return sum(cache_schedule(num_steps, cache_every)) + int(final_denoise)
    return resolve_sampler(sampler).nfe(num_steps) + int(final_denoise)


def steps_for_budget(sampler: str | Sampler, nfe: int) -> int | None:
    """The most steps whose total NFE (the final denoising call included) fits in ``nfe``;
    ``None`` if even the sampler's minimum number of steps does not fit."""
    s = resolve_sampler(sampler)
    steps = (nfe - 1) // s.nfe_per_step
    while steps >= s.min_steps and s.nfe(steps) + 1 > nfe:  # samplers with extra calls (Restart)
        steps -= 1
    return steps if steps >= s.min_steps else None
