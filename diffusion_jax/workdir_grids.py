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
from diffusion_jax.samplers.learned_grid import (MIN_CALIBRATION, calibrate, heldout_size,
                                                 reference_endpoints)
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


def load_grid_file(path, sampler, steps: int | None, process_name: str) -> tuple:
    """``(ts, sampler, steps)`` of a grid file written by ``optimize-grid --out FILE``
    (``sample --grid FILE.json``): its sampler and steps unless the request names them, which
    must then agree."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--grid {path} does not exist (write one with optimize-grid "
                                "--out FILE)")
    row = json.loads(path.read_text())
    if not isinstance(row, dict) or "ts" not in row or "sampler" not in row:
        raise ValueError(f"--grid {path} is not a grid written by optimize-grid (no 'ts'/'sampler')")
    n = len(row["ts"]) - 1
    if sampler not in (None, row["sampler"]) or steps not in (None, n):
        raise ValueError(f"--grid {path} is {row['sampler']} with {n} steps; the request asks "
                         f"for {sampler or row['sampler']} with {steps or n}: drop --sampler/"
                         "--steps or learn a grid for them")
    if row.get("process") != process_name:
        raise ValueError(f"{path} was learned for process {row.get('process')!r}, this model "
                         f"uses {process_name!r}: run optimize-grid again")
    solver = LearnedPC.from_json(row["coeffs"]) if row["sampler"] == "learned_pc" else row["sampler"]
    return tuple(float(t) for t in row["ts"]), solver, n


def load_learned(workdir, sampler: str, steps: int, process_name: str):
    """``(ts, sampler)``: the stored grid, and the sampler to run on it (``learned_pc``: the
    ``LearnedPC`` with its stored coefficients; any other: the name)."""
    ts = load_learned_grid(workdir, sampler, steps, process_name)
    if sampler != "learned_pc":
        return ts, sampler
    row = json.loads(grid_path(workdir, sampler, steps).read_text())
    return ts, LearnedPC.from_json(row["coeffs"])


# ``optimize-grid --sampler auto``: the learned solver and the learned grids of the samplers
# that led the exact-score goal table at NFE 5-10 (README, "Learned grids and a learned solver")
AUTO_CANDIDATES = ("learned_pc", "unipc", "dpmpp_3m", "ipndm_v", "deis")


def _check_grid_request(workdir, exp, sampler: str, nfe: int, num: int) -> int:
    """The steps ``sampler`` takes at ``nfe``; every refusal before anything is loaded."""
    if "grid" not in exp.method.sample_options:
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
    return steps


def calibration_condition(method, num: int, prompts, guidance, sampler: str = "",
                          ) -> tuple[dict | None, float | None]:
    """``(cond, guidance)`` the grid is calibrated under: the prompts for a text-to-image model
    (draw ``i`` gets prompt ``i mod P``, so the denoiser serves any slice of the draws that
    starts at a multiple of ``P``), at ``guidance`` or the pipeline's default; balanced labels
    for a class-conditional one; nothing for an unconditional one. Refusals before anything
    loads."""
    c = method.conditioning
    if method.takes_prompts:
        if not prompts:
            raise ValueError("this is a text-to-image model: calibrate on prompts you give with "
                             "--prompts FILE (one per line; they are cycled over --num)")
        p = len(prompts)
        fit = num - heldout_size(num)
        if sampler in ("learned_pc", "auto") and fit % p:
            ok = next(m for m in range(num, num + 64 * p) if (m - heldout_size(m)) % p == 0)
            raise ValueError(f"{p} prompts: the learned solver fits on the first {fit} of "
                             f"--num {num} draws, which must be a multiple of {p} (prompt i "
                             f"goes to draw i mod {p}); use --num {ok}")
        ids = method.prompt_ids(tuple(prompts), None, p)
        return method.condition(ids), guidance if guidance is not None else method.guidance
    if prompts:
        raise ValueError("--prompts is for text-to-image models; this one has no text encoder")
    if c.num_classes:
        if guidance is not None and not method.null_class:
            raise ValueError("--guidance needs a model with an unconditional (null) class")
        return {"y": jnp.arange(num) % c.num_classes}, guidance
    if guidance is not None:
        raise ValueError("--guidance needs a class-conditional or text-to-image model")
    return None, None


def _setup(workdir, exp, num: int, seed: int, prompts=None, guidance=None):
    """The denoiser, the calibration and held-out draws and the held-out PF-ODE endpoints."""
    method = exp.method
    _, params, step = load(workdir)
    cond, scale = calibration_condition(method, num, prompts, guidance)
    if method.takes_prompts:  # the prompts' contexts cycled over any batch of draws
        cycled = lambda b: {k: jnp.resize(v, (b,) + v.shape[1:]) for k, v in cond.items()}
        denoise = lambda x, t: method.denoiser(params, cycled(x.shape[0]), scale)(x, t)
    else:
        denoise = method.denoiser(params, cond, scale)
    shape = (num,) + exp.shape
    x_cal = method.process.prior_sample(jax.random.key(seed), shape)
    x_new = method.process.prior_sample(jax.random.key(seed + 1), shape)
    return dict(denoise=denoise, x_cal=x_cal, x_new=x_new, step=step,
                ref=reference_endpoints(denoise, method.process, x_new))


def _optimize_one(workdir, exp, setup, sampler: str, nfe: int, steps: int, iters: int, log,
                  path=None) -> dict:
    method, denoise, x_new = exp.method, setup["denoise"], setup["x_new"]
    ts, solver, info = calibrate(denoise, method.process, sampler, steps, setup["x_cal"],
                                 iters=iters, log=log)
    if isinstance(solver, LearnedPC):
        info["coeffs"] = solver.to_json()
    err = lambda s, **kw: float(jnp.sqrt(jnp.mean((sample(denoise, method.process, x_new,
                                                          sampler=s, **kw) - setup["ref"]) ** 2)))
    info.update(process=method.process.name, nfe=nfe, checkpoint_step=setup["step"],
                heldout_rmse=err(solver, ts=ts), heldout_rmse_default=err(
                    sampler, num_steps=steps, grid=method.grid),
                default_grid=default_grid(sampler) if method.grid == "default" else method.grid,
                ts=[float(t) for t in np.asarray(ts)])
    info["sampler"] = sampler
    path = Path(path) if path else grid_path(workdir, sampler, steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, info)
    log(f"{sampler}: held-out RMSE to the PF-ODE endpoint: learned {info['heldout_rmse']:.4g}, "
        f"{info['default_grid']} {info['heldout_rmse_default']:.4g}; wrote {path}")
    return info


def optimize_workdir_grid(workdir, sampler: str, nfe: int, num: int = 64, iters: int = 60,
                          seed: int = 0, log=print, out=None, prompts=None,
                          guidance=None) -> dict:
    """Calibrate on ``num`` noise draws (seed ``seed``), report the error on as many other draws
    (seed ``seed + 1``) for the learned and the experiment's grid, store the grid. ``sampler=
    "auto"``: every one of ``AUTO_CANDIDATES`` that reaches ``nfe`` exactly, each stored, and
    the one with the lowest held-out error named (``grids/auto_nfe{N}.json``). ``out``: a file
    instead of ``WORKDIR/grids/`` (``sample --grid FILE``; with auto, the winner's grid, and
    every candidate's beside it as ``NAME.SAMPLER.json``): a read-only folder's grids."""
    exp = read_experiment(workdir)
    names = [sampler] if sampler != "auto" else [
        s for s in AUTO_CANDIDATES if (steps_for_budget(s, nfe) is not None
                                       and total_nfe(s, steps_for_budget(s, nfe)) == nfe)]
    if not names:
        raise ValueError(f"--nfe {nfe}: none of {', '.join(AUTO_CANDIDATES)} reaches it")
    plan = [(s, _check_grid_request(workdir, exp, s, nfe, num)) for s in names]
    if exp.method.takes_prompts:  # the refusals, before loading
        calibration_condition(exp.method, num, prompts, guidance, sampler)
    setup = _setup(workdir, exp, num, seed, prompts, guidance)
    where = lambda s: None if out is None else (
        out if sampler != "auto" else Path(out).with_name(f"{Path(out).stem}.{s}.json"))
    rows = [_optimize_one(workdir, exp, setup, s, nfe, steps, iters, log, where(s))
            for s, steps in plan]
    if sampler != "auto":
        return rows[0]
    best = min(range(len(rows)), key=lambda i: rows[i]["heldout_rmse"])
    summary = {"nfe": nfe, "winner": names[best], "steps": plan[best][1],
               "candidates": [{"sampler": s, "steps": st, "heldout_rmse": r["heldout_rmse"],
                               "heldout_rmse_default": r["heldout_rmse_default"]}
                              for (s, st), r in zip(plan, rows)]}
    path = grid_path(workdir, "auto", nfe).with_name(f"auto_nfe{nfe}.json")
    write_json(path if out is None else Path(out).with_name(f"{Path(out).stem}.auto.json"), summary)
    if out is not None:  # the winner's grid at FILE itself: what `sample --grid FILE` reads
        write_json(out, rows[best])
    log(f"auto at NFE {nfe}: {names[best]} wins (held-out RMSE {rows[best]['heldout_rmse']:.4g});"
        f" sample with --sampler {names[best]} --steps {plan[best][1]} --grid learned")
    return {**rows[best], "auto": summary}
