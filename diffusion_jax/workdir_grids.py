"""Learned time grids for a trained workdir: ``optimize-grid`` calibrates one per sampler and step
count (``samplers.optimize_grid`` on the model's own PF-ODE) and stores it in
``WORKDIR/grids/<sampler>_<steps>steps.json``; ``sample --grid learned`` (and ``eval``) read it.
For ``learned_pc`` the solver's coefficients are learned with the grid
(``samplers.optimize_solver``) and stored beside it.

    python -m diffusion_jax optimize-grid --workdir runs/fm --sampler ipndm_v --nfe 6
    python -m diffusion_jax sample --workdir runs/fm --sampler ipndm_v --steps 5 --grid learned
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers import (LearnedPC, default_grid, resolve_sampler, sample,
                                    steps_for_budget, total_nfe)
from diffusion_jax.samplers.learned_grid import MIN_CALIBRATION, calibrate, reference_endpoints
from diffusion_jax.utils.atomic import write_json
from diffusion_jax.workdir import load, read_experiment


def grid_path(workdir, sampler: str, steps: int) -> Path:
    return Path(workdir) / "grids" / f"{sampler}_{steps}steps.json"


def load_learned_grid(workdir, sampler: str, steps: int, process_name: str) -> tuple:
    """The stored grid's times (a tuple, hashable for the compiled-sampler cache)."""
    path = grid_path(workdir, sampler, steps)
    if not path.exists():
        raise FileNotFoundError(
            f"no learned grid for {sampler} with {steps} steps in {path.parent}: run "
            f"`python -m diffusion_jax optimize-grid --workdir {workdir} --sampler {sampler} "
            f"--nfe {resolve_sampler(sampler).nfe(steps) + 1}`")
    row = json.loads(path.read_text())
    if row["process"] != process_name:
        raise ValueError(f"{path} was learned for process {row['process']!r}, this model uses "
                         f"{process_name!r}: run optimize-grid again")
    if len(row["ts"]) != steps + 1:
        raise ValueError(f"{path} holds {len(row['ts']) - 1} steps, not {steps}")
    return tuple(float(t) for t in row["ts"])


def load_learned(workdir, sampler: str, steps: int, process_name: str):
    """``(ts, sampler)``: the stored grid, and the sampler to run on it (``learned_pc``: the
    ``LearnedPC`` with its stored coefficients; any other: the name)."""
    ts = load_learned_grid(workdir, sampler, steps, process_name)
    if sampler != "learned_pc":
        return ts, sampler
    row = json.loads(grid_path(workdir, sampler, steps).read_text())
    return ts, LearnedPC.from_json(row["coeffs"])


def optimize_workdir_grid(workdir, sampler: str, nfe: int, num: int = 64, iters: int = 60,
                          seed: int = 0, log=print) -> dict:
    """Calibrate on ``num`` noise draws (seed ``seed``), report the error on as many other draws
    (seed ``seed + 1``) for the learned and the experiment's grid, store the grid."""
    exp = read_experiment(workdir)
    method = exp.method
    if "grid" not in method.sample_options:
        raise ValueError(f"{workdir} holds a {exp.method_name!r} run: learned grids are for "
                         "diffusion models")
    obj = resolve_sampler(sampler)
    if obj.stochastic or obj.adaptive:
        raise ValueError(f"--sampler {sampler} is {'stochastic' if obj.stochastic else 'adaptive'}"
                         ": learned grids are for deterministic fixed-grid samplers")
    steps = steps_for_budget(sampler, nfe)
    if steps is None:
        raise ValueError(f"NFE {nfe} is too few for {sampler} (the final denoising call counts)")
    if total_nfe(sampler, steps) != nfe:  # a grid is labelled with the NFE it really costs
        reach = sorted({total_nfe(sampler, s) for s in (steps, steps + 1)})
        raise ValueError(f"--nfe {nfe} is not reachable with {sampler} "
                         f"({resolve_sampler(sampler).nfe_per_step} evaluations per step + the "
                         f"final call): use --nfe {' or '.join(map(str, reach))}")
    if num < MIN_CALIBRATION:
        raise ValueError(f"--num {num}: optimize-grid needs at least {MIN_CALIBRATION} "
                         "calibration samples")
    _, params, step = load(workdir)
    denoise = method.denoiser(params)
    shape = (num,) + exp.shape
    x_cal = method.process.prior_sample(jax.random.key(seed), shape)
    x_new = method.process.prior_sample(jax.random.key(seed + 1), shape)
    ts, solver, info = calibrate(denoise, method.process, sampler, steps, x_cal, iters=iters,
                                 log=log)
    if isinstance(solver, LearnedPC):
        info["coeffs"] = solver.to_json()
    ref = reference_endpoints(denoise, method.process, x_new)
    err = lambda s, **kw: float(jnp.sqrt(jnp.mean((sample(denoise, method.process, x_new,
                                                          sampler=s, **kw) - ref) ** 2)))
    info.update(process=method.process.name, nfe=nfe, checkpoint_step=step,
                heldout_rmse=err(solver, ts=ts), heldout_rmse_default=err(
                    sampler, num_steps=steps, grid=method.grid),
                default_grid=default_grid(sampler) if method.grid == "default" else method.grid,
                ts=[float(t) for t in np.asarray(ts)])
    path = grid_path(workdir, sampler, steps)
    path.parent.mkdir(exist_ok=True)
    write_json(path, info)
    log(f"held-out RMSE to the PF-ODE endpoint: learned {info['heldout_rmse']:.4g}, "
        f"{info['default_grid']} {info['heldout_rmse_default']:.4g}; wrote {path}")
    return info
