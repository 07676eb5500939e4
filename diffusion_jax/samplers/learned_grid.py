"""Time grids learned through the compiled sampler.

``optimize_grid`` fixes the grid's ends (``t_max``, ``t_min``) and parameterises the interior as
cumulative softplus increments in logSNR (so every candidate is strictly decreasing), starting
from a named grid. The loss is the squared distance of the sampler's output, from a calibration
batch of initial noise, to reference endpoints computed by the adaptive solver at a tight
tolerance; its gradient flows through the sampler (``driver.run``), unrolled: XLA:CPU runs the
gradient of a scan of U-Net calls about 5x slower than the same steps unrolled (demo U-Net, 64
draws, UniPC 4 steps: 9.9 s against 2.0 s per iteration, ``scripts/bench_unroll.py``), while the
forward sampler gains only 1.2x, so sampling keeps the scan.

    ts, info = dj.optimize_grid(denoise, process, "dpmpp_2m", 5, x_calib, key=key)
    x0 = dj.sample(denoise, process, x_T, sampler="dpmpp_2m", ts=ts)
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax.processes import Process
from diffusion_jax.samplers.driver import resolve_sampler, run, sample
from diffusion_jax.samplers.grids import make_grid

MIN_CALIBRATION = 16  # fewer samples than this over-fit the grid to their noise


def reference_endpoints(denoise: Callable, process: Process, x_T, rtol: float = 1e-6):
    """The PF-ODE endpoints from ``x_T`` (adaptive Dormand-Prince, then the ODE final step)."""
    return sample(denoise, process, x_T, sampler="ode_dopri5",
                  sampler_kwargs=dict(rtol=rtol, atol=rtol))


def _ts_from(theta, l_hi, l_lo, process, learn_end: bool):
    """``theta``: the interior's softplus increments, then (``learn_end``) the end's offset."""
    if learn_end:  # the last time may move up from t_min (logSNR down), never below it
        theta, end = theta[:-1], theta[-1]
        l_lo = l_lo - jax.nn.softplus(end)
    inc = jax.nn.softplus(theta)
    frac = jnp.concatenate([jnp.zeros(1, inc.dtype), jnp.cumsum(inc) / jnp.sum(inc)])
    return process.t_of_logsnr(l_hi + frac * (l_lo - l_hi))


def optimize_grid(denoise: Callable, process: Process, sampler: str, num_steps: int, x_calib,
                  *, key=None, iters: int = 150, lr: float = 0.05, init: str = "logsnr",
                  reference=None, learn_end: bool = True, log=None) -> tuple[np.ndarray, dict]:
    """``(ts, info)``: a grid of ``num_steps`` steps for the deterministic ``sampler`` that
    minimises the endpoint error on ``x_calib`` (``[B, ...]`` initial noise, ``B >= 16``).
    ``t_max`` stays fixed; with ``learn_end`` the last time (where the final step to the data
    end starts) is learned too, at or above the process's ``t_min``: at low NFE the best place
    to hand over to the final step is rarely ``t_min``. ``info`` has the calibration loss
    before/after and the seconds taken."""
    obj = resolve_sampler(sampler)
    if obj.stochastic or hasattr(obj, "run"):
        raise ValueError(f"optimize_grid needs a fixed-grid deterministic sampler, got {sampler!r}")
    if x_calib.shape[0] < MIN_CALIBRATION:
        raise ValueError(f"optimize_grid needs at least {MIN_CALIBRATION} calibration samples, got "
                         f"{x_calib.shape[0]}: the grid would fit their noise")
    if num_steps < max(obj.min_steps, 1):
        raise ValueError(f"{sampler} needs at least {obj.min_steps} steps, got {num_steps}")
    t0 = time.perf_counter()
    key = jax.random.key(0) if key is None else key
    ref = reference_endpoints(denoise, process, x_calib) if reference is None else reference
    base = make_grid(process, num_steps, init)
    lam = np.asarray(process.logsnr(base), np.float64)
    l_hi, l_lo = float(lam[0]), float(lam[-1])
    theta0 = np.log(np.expm1(np.maximum(np.diff(lam) / (l_lo - l_hi), 1e-6)))  # softplus^-1
    if learn_end:  # start 0.05 in logSNR above t_min, where softplus still has a gradient
        theta0 = np.append(theta0, np.log(np.expm1(0.05)))
    x_calib = jnp.asarray(x_calib)

    def loss_fn(theta):
        ts = _ts_from(theta, l_hi, l_lo, process, learn_end).astype(x_calib.dtype)
        ts = ts.at[0].set(base[0])
        if not learn_end:
            ts = ts.at[-1].set(base[-1])
        x, _ = run(obj, denoise, process, x_calib, ts, key, unroll=True)
        return jnp.mean((x - ref) ** 2)

    tx = optax.adam(lr)
    theta = jnp.asarray(theta0, x_calib.dtype)
    opt = tx.init(theta)

    @jax.jit
    def update(theta, opt):
        loss, g = jax.value_and_grad(loss_fn)(theta)
        u, opt = tx.update(g, opt)
        return optax.apply_updates(theta, u), opt, loss

    first = None
    best = (np.inf, theta)
    for i in range(iters):
        new, opt, loss = update(theta, opt)
        loss = float(loss)
        first = loss if first is None else first
        if np.isfinite(loss) and loss < best[0]:
            best = (loss, theta)  # the loss is that of ``theta``, before this update
        theta = new
        if log and (i % 50 == 0 or i == iters - 1):
            log(f"optimize_grid {sampler} {num_steps} steps: iter {i} rmse {np.sqrt(loss):.4g}")
    ts = np.asarray(_ts_from(best[1].astype(jnp.float64) if jax.config.jax_enable_x64
                             else best[1], l_hi, l_lo, process, learn_end), np.float64)
    ts[0] = base[0]
    ts[-1] = max(ts[-1], base[-1]) if learn_end else base[-1]
    if np.any(np.diff(ts) >= 0):
        raise ValueError("the learned grid is not strictly decreasing (steps merged); use fewer "
                         "steps or a smaller lr")
    info = {"sampler": sampler, "num_steps": num_steps, "init": init,
            "calib_rmse_init": float(np.sqrt(first)), "calib_rmse": float(np.sqrt(best[0])),
            "calib_num": int(x_calib.shape[0]), "iters": iters, "learn_end": learn_end,
            "seconds": time.perf_counter() - t0}
    return ts, info
