"""Time grids (and solvers) learned through the compiled sampler.

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

``optimize_solver`` learns the coefficients of a ``LearnedPC`` predictor-corrector together with
its grid (see ``learned_pc``), and keeps the candidate with the lowest error on a held-out part
of the calibration noise:

    ts, solver, info = dj.optimize_solver(denoise, process, 4, x_calib)
    x0 = dj.sample(denoise, process, x_T, sampler=solver, ts=ts)
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
from diffusion_jax.samplers.learned_pc import MAX_HISTORY, LearnedPC

MIN_CALIBRATION = 16  # fewer samples than this over-fit the grid to their noise


def reference_endpoints(denoise: Callable, process: Process, x_T, rtol: float | None = None):
    """The PF-ODE endpoints from ``x_T`` (adaptive Dormand-Prince, then the ODE final step).
    ``rtol`` (= ``atol``) defaults to 1e-6 in float64 and 1e-5 in lower precision: float32's
    rounding is 6e-8 a step, and on the demo U-Net (64 draws) 1e-6 took 89 s against 40 s for
    endpoints 1.1e-3 apart in RMSE, 2% of the error a learned 8-NFE solver leaves."""
    if rtol is None:
        rtol = 1e-6 if jnp.result_type(x_T) == jnp.float64 else 1e-5
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


def _grid_start(process: Process, num_steps: int, init: str, learn_end: bool):
    """``(base grid, logsnr at its ends, theta0)``: the softplus parameters of ``init``."""
    base = make_grid(process, num_steps, init)
    lam = np.asarray(process.logsnr(base), np.float64)
    l_hi, l_lo = float(lam[0]), float(lam[-1])
    theta0 = np.log(np.expm1(np.maximum(np.diff(lam) / (l_lo - l_hi), 1e-6)))  # softplus^-1
    if learn_end:  # start 0.05 in logSNR above t_min, where softplus still has a gradient
        theta0 = np.append(theta0, np.log(np.expm1(0.05)))
    return base, l_hi, l_lo, theta0


def _grid_of(theta, base, l_hi, l_lo, process, learn_end, dtype):
    """The (traced) grid of ``theta``, ``t_max`` fixed (and ``t_min`` without ``learn_end``)."""
    ts = _ts_from(theta, l_hi, l_lo, process, learn_end).astype(dtype).at[0].set(base[0])
    return ts if learn_end else ts.at[-1].set(base[-1])


def _grid_final(theta, base, l_hi, l_lo, process, learn_end) -> np.ndarray:
    """The learned grid on the host (float64), checked strictly decreasing."""
    theta = theta.astype(jnp.float64) if jax.config.jax_enable_x64 else theta
    ts = np.array(_ts_from(theta, l_hi, l_lo, process, learn_end), np.float64)  # a copy: writable
    ts[0] = base[0]
    ts[-1] = max(ts[-1], base[-1]) if learn_end else base[-1]
    if np.any(np.diff(ts) >= 0):
        raise ValueError("the learned grid is not strictly decreasing (steps merged); use fewer "
                         "steps or a smaller lr")
    return ts


def _check_calibration(x_calib, num_steps: int, min_steps: int, name: str):
    if x_calib.shape[0] < MIN_CALIBRATION:
        raise ValueError(f"{name} needs at least {MIN_CALIBRATION} calibration samples, got "
                         f"{x_calib.shape[0]}: the grid would fit their noise")
    if not isinstance(num_steps, (int, np.integer)) or num_steps < max(min_steps, 1):
        raise ValueError(f"{name} needs at least {max(min_steps, 1)} steps, got {num_steps!r}")


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
    if obj.stochastic or obj.adaptive:
        raise ValueError(f"optimize_grid needs a fixed-grid deterministic sampler, got {sampler!r}")
    _check_calibration(x_calib, num_steps, obj.min_steps, f"optimize_grid({sampler!r})")
    t0 = time.perf_counter()
    key = jax.random.key(0) if key is None else key
    ref = reference_endpoints(denoise, process, x_calib) if reference is None else reference
    base, l_hi, l_lo, theta0 = _grid_start(process, num_steps, init, learn_end)
    x_calib = jnp.asarray(x_calib)

    def loss_fn(theta):
        ts = _grid_of(theta, base, l_hi, l_lo, process, learn_end, x_calib.dtype)
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
    ts = _grid_final(best[1], base, l_hi, l_lo, process, learn_end)
    info = {"sampler": sampler, "num_steps": num_steps, "init": init,
            "calib_rmse_init": float(np.sqrt(first)), "calib_rmse": float(np.sqrt(best[0])),
            "calib_num": int(x_calib.shape[0]), "iters": iters, "learn_end": learn_end,
            "seconds": time.perf_counter() - t0}
    return ts, info


def heldout_size(n: int, val_fraction: float = 0.25) -> int:
    """How many of ``n`` calibration draws ``optimize_solver`` holds out (the last ones)."""
    return max(int(round(val_fraction * n)), 4)


def optimize_solver(denoise: Callable, process: Process, num_steps: int, x_calib, *, key=None,
                    iters: int = 300, lr: float = 0.03, history: int = MAX_HISTORY,
                    correctors=(True, False), init: str = "logsnr", reference=None,
                    learn_end: bool = True, val_fraction: float = 0.25, log=None
                    ) -> tuple[np.ndarray, LearnedPC, dict]:
    """``(ts, solver, info)``: a ``LearnedPC`` of ``num_steps`` steps (NFE ``num_steps + 1``)
    and its grid, fitted to the PF-ODE endpoints of ``x_calib`` (``[B, ...]`` noise, ``B >=
    16``). The last ``val_fraction`` of ``x_calib`` is held out: each start (one per entry of
    ``correctors``: with and without the corrector; the loss is not convex and either can win)
    runs ``iters`` Adam steps on the rest; the parameters with the lowest held-out error over
    all starts and iterations (the starting solvers included) are returned: an iterate that
    over-fits the fit set loses. ``info``: held-out RMSE at the start and at the end, the
    chosen start, seconds."""
    _check_solver_fit(history, x_calib, num_steps, val_fraction)
    t0 = time.perf_counter()
    key = jax.random.key(0) if key is None else key
    x_calib = jnp.asarray(x_calib)
    ref = reference_endpoints(denoise, process, x_calib) if reference is None else reference
    n_val = heldout_size(x_calib.shape[0], val_fraction)
    (x_fit, r_fit), (x_val, r_val) = ((x_calib[sl], jnp.asarray(ref)[sl])
                                      for sl in (slice(None, -n_val), slice(-n_val, None)))
    base, l_hi, l_lo, theta0 = _grid_start(process, num_steps, init, learn_end)
    dt = x_calib.dtype
    n, k = num_steps, history

    def loss_fn(p, x, r, gate):  # gate 0: the corrector's output is not used (no gradient to c)
        ts = _grid_of(p["theta"], base, l_hi, l_lo, process, learn_end, dt)
        solver = LearnedPC(history=k, corrector=gate, pred=p["pred"], corr=p["corr"],
                           fin=p["fin"])
        out, _ = run(solver, denoise, process, x, ts, key, unroll=True)
        return jnp.mean((out - r) ** 2)

    tx = optax.adam(lr)

    @jax.jit  # one compile serves every start: the corrector is switched by a traced gate
    def update(p, opt, gate):
        val = loss_fn(p, x_val, r_val, gate)
        loss, g = jax.value_and_grad(loss_fn)(p, x_fit, r_fit, gate)
        u, opt = tx.update(g, opt)
        return optax.apply_updates(p, u), opt, loss, val

    start = lambda: {"theta": jnp.asarray(theta0, dt), "pred": jnp.zeros((n, k), dt),
                     "corr": jnp.zeros((n, k + 1), dt), "fin": jnp.zeros((3,), dt)}

    def report(c, i, loss, v):
        if log and (i % 50 == 0 or i == iters - 1):
            log(f"optimize_solver {n} steps (corrector={c}): iter {i} fit rmse "
                f"{np.sqrt(loss):.4g} held-out {np.sqrt(v):.4g}")

    val, p, corrector, first = _best_of_starts(update, start, correctors, iters, tx, dt, report)
    solver = _stored_solver(p, corrector, k)
    ts = _grid_final(p["theta"], base, l_hi, l_lo, process, learn_end)
    info = {"sampler": "learned_pc", "num_steps": n, "init": init, "history": k,
            "corrector": corrector, "val_rmse_init": {str(c): float(np.sqrt(v))
                                                      for c, v in first.items()},
            "val_rmse": float(np.sqrt(val)), "calib_num": int(x_calib.shape[0]),
            "val_num": n_val, "iters": iters, "learn_end": learn_end,
            "seconds": time.perf_counter() - t0}
    return ts, solver, info


def _check_solver_fit(history: int, x_calib, num_steps: int, val_fraction: float) -> None:
    LearnedPC(history=history).validate()
    _check_calibration(x_calib, num_steps, 1, "optimize_solver")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


def _stored_solver(p: dict, corrector: bool, history: int) -> LearnedPC:
    """The fitted tables as tuples of floats: a hashable solver, a static argument of jit."""
    tup = lambda v: tuple(tuple(float(a) for a in row) for row in np.asarray(v))
    return LearnedPC(history=history, corrector=corrector, pred=tup(p["pred"]),
                     corr=tup(p["corr"]) if corrector else None,
                     fin=tuple(float(a) for a in np.asarray(p["fin"])))


def _best_of_starts(update, start, correctors, iters: int, tx, dt, report):
    """Adam from ``start()`` once per corrector setting; ``(held-out MSE, params, corrector,
    first held-out MSE per setting)`` of the best iterate (its ``val`` is that of ``params``,
    before the update)."""
    best, first = (np.inf, None, None), {}
    for corrector in correctors:
        params = start()
        opt, gate = tx.init(params), jnp.asarray(float(corrector), dt)
        for i in range(iters):
            new, opt, loss, val = update(params, opt, gate)
            val = float(val)
            first.setdefault(corrector, val)
            if np.isfinite(val) and val < best[0]:
                best = (val, params, corrector)
            params = new
            report(corrector, i, float(loss), val)
    if best[1] is None:
        raise FloatingPointError("optimize_solver: every candidate gave NaN; lower lr")
    return (*best, first)


def calibrate(denoise: Callable, process: Process, sampler: str, num_steps: int, x_calib, *,
              iters: int, reference=None, log=None):
    """``(ts, solver, info)`` for a sampler name: ``learned_pc`` learns its coefficients with the
    grid (``optimize_solver``; ``solver`` is the learned ``LearnedPC``), any other name only the
    grid (``optimize_grid``; ``solver`` is the name)."""
    if sampler == "learned_pc":
        return optimize_solver(denoise, process, num_steps, x_calib, iters=iters,
                               reference=reference, log=log)
    ts, info = optimize_grid(denoise, process, sampler, num_steps, x_calib, iters=iters,
                             reference=reference, log=log)
    return ts, sampler, info
