"""Sampler benchmark on exact-score problems: error vs NFE, wall time, compile time.

For each case (a Gaussian mixture with its exact denoiser) and each sampler at each NFE budget:

* ``rmse``: RMS distance of the samples to the exact PF-ODE endpoint at the data end
  (``sigma = 0``) from the same ``x_T`` (deterministic samplers; the reference is Dormand-Prince
  at rtol=atol=1e-9 in float64 down to ``t = 1e-9``, where what is left of the path is below
  1e-8; a reference that stops at ``t_min`` and jumps would itself be 1e-3 off);
* ``logp_gap``: ``E_data[log p] - E_samples[log p]`` per dimension under the exact density
  (every sampler; 0 is ideal, positive means samples fall off the modes);
* ``wall_s``: median wall time of one batch after compilation; ``compile_s``: first call minus
  that.

NFE is counted honestly: ``sampler.nfe(steps) + 1`` (the final denoising step); a sampler runs
with the most steps that fit the budget and is skipped when even ``min_steps`` do not.

    python -m diffusion_jax bench-samplers --out bench_out
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot, no backend switch

from diffusion_jax import gmm
from diffusion_jax.eval.reference_stats import read_stats
from diffusion_jax.eval.sample_eval import evaluate
from diffusion_jax.models import UNet, UNetConfig
from diffusion_jax.parameterization import VPrediction, make_denoiser
from diffusion_jax.processes import VP
from diffusion_jax.samplers import (SAMPLERS, default_grid, resolve_sampler, sample,
                                    steps_for_budget)
from diffusion_jax.samplers.learned_grid import calibrate
from diffusion_jax.utils.atomic import write_json, write_text
from diffusion_jax.utils.images import save_figure
from diffusion_jax.workdir import read_experiment
from diffusion_jax.workdir_grids import grid_path, optimize_workdir_grid

CASES = {
    "ring2d": lambda: gmm.ring(8, 2.0, 0.05),
    "gmm64": lambda: gmm.random_mixture(64, 16, 0.05, seed=0),
    "image3072": lambda: gmm.random_mixture(3072, 10, 0.1, seed=0, event_shape=(32, 32, 3)),
}
DEFAULT_SAMPLERS = [n for n in SAMPLERS if n != "ode_dopri5"]


def _timed(fn, *args, repeats: int = 3):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    wall = float(np.median(times))
    return out, wall, max(first - wall, 0.0)


def exact_endpoints(mixture: gmm.GaussianMixture, proc, x_T) -> np.ndarray:
    """The exact PF-ODE endpoints at ``sigma = 0`` from ``x_T`` (float64 Dormand-Prince at
    rtol = atol = 1e-9 down to ``t = 1e-9``)."""
    with jax.enable_x64(True):
        end = VP.linear(t_min=1e-9)  # the same schedule, integrated to the data end
        ref = sample(mixture.denoiser(end), end, jnp.asarray(x_T, jnp.float64),
                     sampler="ode_dopri5", ts=[proc.t_max, end.t_min], final="denoise",
                     sampler_kwargs=dict(rtol=1e-9, atol=1e-9))
    return np.asarray(ref, np.float32)


def bench_case(name: str, mixture: gmm.GaussianMixture, samplers, nfes, batch: int, log=print):
    proc = VP.linear()
    shape = (batch,) + mixture.event_shape
    key = jax.random.key(0)
    x_T = proc.prior_sample(key, shape)
    ref = exact_endpoints(mixture, proc, x_T)
    data = mixture.sample(jax.random.key(1), batch)[0]
    logp = lambda x: np.asarray(mixture.logp(proc, x, proc.t_min)) / mixture.dim
    logp_data = float(np.mean(logp(data)))
    den = mixture.denoiser(proc)
    rows = []
    for s_name in samplers:
        obj = resolve_sampler(s_name)
        for nfe in nfes:
            steps = steps_for_budget(s_name, nfe)
            if steps is None:
                continue
            fn = jax.jit(lambda xt, k, _n=s_name, _s=steps: sample(den, proc, xt, sampler=_n,
                                                                     num_steps=_s, key=k))
            x, wall, comp = _timed(fn, x_T, jax.random.key(2))
            x = np.asarray(x)
            row = {"case": name, "sampler": s_name, "nfe": obj.nfe(steps) + 1, "budget": nfe,
                   "steps": steps, "stochastic": bool(obj.stochastic),
                   "rmse": None if obj.stochastic else float(np.sqrt(np.mean((x - ref) ** 2))),
                   "logp_gap": logp_data - float(np.mean(logp(x))) if np.all(np.isfinite(x)) else None,
                   "wall_s": wall, "compile_s": comp}
            rows.append(row)
            log(f"{name:10s} {s_name:18s} NFE {row['nfe']:3d}  rmse "
                f"{row['rmse'] if row['rmse'] is None else format(row['rmse'], '.3e')}  "
                f"logp_gap {row['logp_gap'] if row['logp_gap'] is None else format(row['logp_gap'], '+.3f')}"
                f"  wall {wall * 1e3:.1f} ms  compile {comp:.2f} s")
    return rows


def scan_overhead(nfes=(10, 20, 50), samplers=("ddim", "dpmpp_2m", "unipc"), batch: int = 64,
                  log=print):
    """Sampler wall time / (NFE x one call of a small U-Net denoiser) (1.0 = the scan adds
    nothing), and compile time vs NFE."""

    proc = VP.cosine()
    model = UNet(UNetConfig(channels=16, channel_mult=(1, 2, 2), attn_resolutions=(7,)))
    x = jnp.zeros((batch, 28, 28, 1))
    params = model.init(jax.random.key(0), x, jnp.zeros((batch,)))["params"]
    den = make_denoiser(lambda xx, t: model.apply({"params": params}, xx, t), proc, VPrediction())
    call = jax.jit(den)
    x_T = proc.prior_sample(jax.random.key(1), x.shape)
    _, t_call, _ = _timed(call, x_T, jnp.float32(0.5), repeats=5)
    rows = []
    for s_name in samplers:
        for nfe in nfes:
            steps = steps_for_budget(s_name, nfe)
            fn = jax.jit(lambda xt, k, _n=s_name, _s=steps: sample(den, proc, xt, sampler=_n,
                                                                     num_steps=_s, key=k))
            _, wall, comp = _timed(fn, x_T, jax.random.key(2))
            n = resolve_sampler(s_name).nfe(steps) + 1
            rows.append({"sampler": s_name, "nfe": n, "wall_s": wall, "denoiser_call_s": t_call,
                         "ratio": wall / (n * t_call), "compile_s": comp})
            log(f"U-Net {s_name:10s} NFE {n:3d}: {wall:.3f} s = {wall / (n * t_call):.3f} x "
                f"NFE x {t_call * 1e3:.1f} ms; compile {comp:.2f} s")
    return rows


HISTORY_SAMPLERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "plms", "deis", "ipndm_v")


def history_overhead(samplers=HISTORY_SAMPLERS, shape=(128, 3072), steps=(20, 99), log=print):
    """Per-step cost of each sampler's own arithmetic, history included, with a trivial denoiser
    (``0.5 x``, float64): ``(time(99 steps) - time(20 steps)) / 79``, and its ratio to DDIM's.
    The floor for a multistep method is its memory traffic: DPM-Solver++2M reads ``x`` and two
    outputs and writes ``x`` and one output (3x DDIM's read and write of ``x``); order-4 PLMS
    reads four."""
    den = lambda x, t: 0.5 * x
    proc = VP.linear()
    rows = []
    with jax.enable_x64(True):
        x_T = jax.random.normal(jax.random.key(0), shape, jnp.float64)
        for s_name in samplers:
            t = []
            for n in steps:
                fn = jax.jit(lambda x, _n=s_name, _s=n: sample(den, proc, x, sampler=_n, num_steps=_s))
                t.append(min(_timed(fn, x_T, repeats=5)[1] for _ in range(2)))  # 2 medians of 5
            rows.append({"sampler": s_name, "ms_per_step": (t[1] - t[0]) / (steps[1] - steps[0]) * 1e3})
    base = next((r["ms_per_step"] for r in rows if r["sampler"] == "ddim"), None)
    for r in rows:
        r["ratio_to_ddim"] = r["ms_per_step"] / base if base else None
        log(f"trivial denoiser {shape} f64 {r['sampler']:10s} {r['ms_per_step']:.3f} ms/step"
            + (f" = {r['ratio_to_ddim']:.1f} x DDIM" if base else ""))
    return rows


# The samplers the issue that asked for the low-NFE goals found in place (2026-11), and the final
# step they all took then (a first-order jump from t_min): the baseline of ``goals``.
BASELINE_SAMPLERS = ("ddim", "euler", "heun", "plms", "dpm_solver_1", "dpm_solver_2",
                     "dpm_solver_3", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "unipc", "unipc_2",
                     "unipc_bh1", "ode_euler", "ode_heun", "ode_rk4")
GOAL_LEARNED = ("unipc", "dpmpp_3m", "ipndm_v", "deis", "learned_pc")


def baseline_rmses(den, proc, x_T, rmse, nfe: int, pool=None) -> dict:
    """The goal table's baseline at ``nfe``: ``{sampler: rmse(samples)}`` for each of
    ``BASELINE_SAMPLERS`` (in ``pool``) that fits the budget, on the logsnr grid with the
    first-order final jump."""
    out = {}
    for s_name in BASELINE_SAMPLERS:
        steps = steps_for_budget(s_name, nfe)
        if steps is not None and (pool is None or s_name in pool):
            out[s_name] = rmse(sample(den, proc, x_T, sampler=s_name, num_steps=steps,
                                      grid="logsnr", final="denoise"))
    return out


def _deterministic():
    out = []
    for name in SAMPLERS:
        obj = resolve_sampler(name)
        if not obj.stochastic and not obj.adaptive:
            out.append(name)
    return out


def goals(cases=None, nfes=(5, 10), learned=GOAL_LEARNED, batch: int = 256, calib: int = 256,
          iters: int = 150, solver_iters: int = 1000, pool=None, log=print) -> list[dict]:
    """The low-NFE goals, measured: per case and NFE, RMSE to the exact endpoint of

    * ``baseline``: the best of ``BASELINE_SAMPLERS`` on the logsnr grid with the first-order
      final jump (what the library offered before the goals were set);
    * ``logsnr``: the best of every deterministic sampler on the logsnr grid, final step
      ``"ode"``;
    * ``default``: the best of every deterministic sampler with its default grid (the user who
      names only the sampler);
    * ``learned``: the best of ``learned`` with a grid from ``optimize_grid`` calibrated on
      ``calib`` draws of *other* noise (key 7) against their own exact endpoints
      (``learned_pc``: coefficients and grid from ``optimize_solver``, ``solver_iters``).

    ``pool`` limits the samplers tried (default: every deterministic fixed-grid one). One row
    per (case, NFE, variant) with the winning sampler, the ratio to ``baseline`` and every
    sampler's RMSE (``all``)."""

    cases = cases or list(CASES)
    det = [s for s in _deterministic() if pool is None or s in pool]
    for s_name in learned:
        resolve_sampler(s_name)  # unknown names fail before any compile
    rows = []
    for c in cases:
        mixture, proc = CASES[c](), VP.linear()
        b = min(batch, 64) if c == "image3072" else batch
        x_T = proc.prior_sample(jax.random.key(0), (b,) + mixture.event_shape)
        x_cal = proc.prior_sample(jax.random.key(7), (calib,) + mixture.event_shape)
        ref, ref_cal = exact_endpoints(mixture, proc, x_T), exact_endpoints(mixture, proc, x_cal)
        den = mixture.denoiser(proc)
        rmse = lambda x: float(np.sqrt(np.mean((np.asarray(x) - ref) ** 2)))
        for nfe in nfes:
            found = {"baseline": baseline_rmses(den, proc, x_T, rmse, nfe, pool),
                     "logsnr": {}, "default": {}, "learned": {}}
            for s_name in det:
                steps = steps_for_budget(s_name, nfe)
                if steps is None:
                    continue
                run_ = lambda **kw: rmse(sample(den, proc, x_T, sampler=s_name, num_steps=steps,
                                                **kw))
                found["logsnr"][s_name] = run_(grid="logsnr")
                found["default"][s_name] = (found["logsnr"][s_name]
                                            if default_grid(s_name) == "logsnr" else run_())
                if s_name in learned:
                    t0 = time.perf_counter()
                    ts, obj, _ = calibrate(den, proc, s_name, steps, x_cal, reference=ref_cal,
                                           iters=solver_iters if s_name == "learned_pc" else iters)
                    found["learned"][s_name] = rmse(sample(den, proc, x_T, sampler=obj, ts=ts))
                    log(f"{c} NFE {nfe} {s_name}: calibrated in {time.perf_counter() - t0:.1f}"
                        f" s, rmse {found['learned'][s_name]:.3e} (logsnr "
                        f"{found['logsnr'][s_name]:.3e})")
            rows += _goal_rows(c, nfe, found, log)
    return rows


def _goal_rows(case: str, nfe: int, found: dict, log) -> list[dict]:
    """The best sampler of each variant, and its ratio to the baseline's best."""
    base, rows = min(found["baseline"].values()), []
    for variant, res in found.items():
        if not res:
            continue
        best = min(res, key=res.get)
        rows.append({"case": case, "nfe": nfe, "variant": variant, "sampler": best,
                     "rmse": res[best], "ratio_to_baseline": res[best] / base, "all": res})
        log(f"{case:10s} NFE {nfe:3d} {variant:8s} best {best:12s} rmse {res[best]:.3e} "
            f"= {res[best] / base:.3f} x baseline")
    return rows


def write_report(out: Path, rows, overhead, history=(), goal_rows=()):
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"cases": rows, "scan_overhead": overhead,
                                      "history_overhead": list(history),
                                      "goals": list(goal_rows)})
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows):
        cr = [r for r in rows if r["case"] == case]
        budgets = sorted({r["budget"] for r in cr})
        for metric in ("rmse", "logp_gap"):
            lines += [f"\n### {case}: {metric} (by NFE budget)\n",
                      "| sampler | " + " | ".join(str(b) for b in budgets) + " |",
                      "|---|" + "---|" * len(budgets)]
            for s in dict.fromkeys(r["sampler"] for r in cr):
                cells = []
                for b in budgets:
                    v = next((r[metric] for r in cr if r["sampler"] == s and r["budget"] == b), None)
                    cells.append("" if v is None else f"{v:.2e}" if metric == "rmse" else f"{v:+.3f}")
                if any(cells):
                    lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if overhead:
        lines += ["\n### scan overhead (small U-Net denoiser)\n",
                  "| sampler | NFE | wall s | ratio to NFE x call | compile s |", "|---|---|---|---|---|"]
        lines += [f"| {o['sampler']} | {o['nfe']} | {o['wall_s']:.3f} | {o['ratio']:.3f} | "
                  f"{o['compile_s']:.2f} |" for o in overhead]
    if history:
        lines += ["\n### per-step cost with a trivial denoiser (128 x 3072, float64)\n",
                  "| sampler | ms / step | x DDIM |", "|---|---|---|"]
        lines += [f"| {h['sampler']} | {h['ms_per_step']:.3f} | {h['ratio_to_ddim']:.1f} |"
                  for h in history]
    if goal_rows:
        lines += ["\n### low-NFE goals: best RMSE per variant (x the baseline: the pre-goal "
                  "samplers on logsnr with the first-order final jump)\n",
                  "| case | NFE | baseline | logsnr | default | learned |", "|---|---|---|---|---|---|"]
        for c, n in dict.fromkeys((g["case"], g["nfe"]) for g in goal_rows):
            cell = {g["variant"]: f"{g['rmse']:.2e} ({g['sampler']}, {g['ratio_to_baseline']:.2f}x)"
                    for g in goal_rows if (g["case"], g["nfe"]) == (c, n)}
            lines.append(f"| {c} | {n} | " + " | ".join(
                cell.get(v, "") for v in ("baseline", "logsnr", "default", "learned")) + " |")
    write_text(out / "results.md", "\n".join(lines) + "\n")
    _plot(out, rows)


def _plot(out: Path, rows):

    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig = Figure(figsize=(5.5 * len(cases), 4.5))
    axes = fig.subplots(1, len(cases), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for j, s in enumerate(dict.fromkeys(r["sampler"] for r in rows if r["case"] == case)):
            pts = [(r["nfe"], r["rmse"]) for r in rows
                   if r["case"] == case and r["sampler"] == s and r["rmse"] is not None]
            if pts:  # 10 colours cycle: the line style tells the cycles apart
                ax.plot(*zip(*pts), marker="os^"[j // 10 % 3], ms=3, lw=1,
                        ls=("-", "--", ":")[j // 10 % 3], label=s)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("RMSE to exact PF-ODE endpoint")
        ax.set_title(case)
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, out / "error_vs_nfe.png", dpi=110)


def run_benchmark(out: Path, nfes, samplers=None, cases=None, batch: int = 256,
                  overhead: bool = True, goal_nfes=(5, 10), learned=None):
    """Every case, then the scan and history overheads, then the goal table (``learned``:
    the samplers that get a learned grid there, default ``GOAL_LEARNED``)."""
    samplers = samplers or DEFAULT_SAMPLERS
    for s in samplers:
        resolve_sampler(s)  # unknown names fail here, before any compile
    cases = cases or list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"unknown cases {unknown}; valid: {list(CASES)}")
    rows = []
    for c in cases:
        b = min(batch, 64) if c == "image3072" else batch
        rows += bench_case(c, CASES[c](), samplers, nfes, b)
    ov = scan_overhead() if overhead else []
    hist = history_overhead() if overhead else []
    goal_rows = (goals(cases, goal_nfes, GOAL_LEARNED if learned is None else learned, batch)
                 if goal_nfes else [])
    write_report(Path(out), rows, ov, hist, goal_rows)
    print(f"wrote {out}/results.json, results.md, error_vs_nfe.png")
    return rows, ov


MODEL_SAMPLERS = ("dpmpp_2m", "unipc", "ipndm", "deis", "learned_pc")
MODEL_NFES = (4, 5, 6, 8, 10)


def model_pass(workdir, classifier, out: Path, samplers=MODEL_SAMPLERS, nfes=MODEL_NFES,
               reference_nfe: int | None = 20, num: int = 1000, calib: int = 64,
               iters: int = 60, log=print, ref_stats: str | None = None,
               inception: str | None = None) -> list[dict]:
    """The samplers on a trained model: FD (``classifier``'s features) at each NFE with the
    default grid and with a learned one (``optimize-grid``, calibrated here on ``calib`` draws
    where the workdir has none yet), plus every sampler at ``reference_nfe`` on its default grid
    (the converged figure the low-NFE ones are read against). Rows and table in ``out/model``."""

    for s_name in samplers:
        resolve_sampler(s_name)
    if ref_stats:
        read_stats(ref_stats)  # checked before any calibration
    elif not read_experiment(workdir).data.dataset:
        raise ValueError(f"{workdir} is a pretrained model with no test split: pass --ref-stats "
                         "FILE (FID against reference statistics)")
    calib_s = {}
    for s_name in samplers:
        for nfe in nfes:
            steps = steps_for_budget(s_name, nfe)
            if steps is None or grid_path(workdir, s_name, steps).exists():
                continue
            calib_s[(s_name, nfe)] = optimize_workdir_grid(workdir, s_name, nfe, calib, iters,
                                                           log=log)["seconds"]
    for (s_name, nfe), secs in calib_s.items():
        log(f"calibrated {s_name} at NFE {nfe} in {secs:.1f} s")
    extra = [reference_nfe] if reference_nfe and reference_nfe not in nfes else []
    return evaluate(str(workdir), classifier, list(samplers), list(nfes) + extra, num,
                    out=str(Path(out) / "model"), grids=("default", "learned"),
                    ref_stats=ref_stats, inception=inception)
