"""Can one fixed grid halve the low-NFE error on every exact-score case? A sweep of clipped logSNR
grids: ``t_max``, then ``N`` points uniform in logSNR from ``--starts`` to ``--ends`` (one step
``t_max -> start`` first; ``start = none``: the plain logsnr grid from ``t_max``; an end above
9 stands for ``t_min``), for UniPC, DPM-Solver++3M and iPNDM-v at NFE 5 and 10, each with three
final steps from the last point: the ODE step ``(y + D_N)/2`` of ``final_step`` and the
extrapolations of the last two / three denoiser outputs to ``u = (sigma/alpha)^2 = 0``. Prints
every configuration's RMSE ratio to the goal table's baseline (``goals``: the best pre-goal
sampler on the logsnr grid with the first-order final jump, computed here) per case and NFE,
best geometric mean first.

    python scripts/sweep_grid_ends.py [--starts -6,-4,-2,0] [--ends 9.1,7,6,5,4,3,2] [--cases ring2d]
"""

import argparse
import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.bench.sampler_bench import CASES, baseline_rmses, exact_endpoints
from diffusion_jax.processes import VP
from diffusion_jax.samplers import resolve_sampler, run

SAMPLERS = ("unipc", "dpmpp_3m", "ipndm_v")


def finals(proc, den, outs, ts):
    """The three final steps from ``outs[j] = (x_N-j, D(x_N-j))`` on the grids ``ts[:len - j]``."""
    us = [float((proc.sigma(ts[-1 - j]) / proc.alpha(ts[-1 - j])) ** 2) for j in range(3)]
    ds = [o[1] for o in outs]
    y = outs[0][0] / proc.alpha(ts[-1])
    lin = ds[0] - us[0] * (ds[1] - ds[0]) / (us[1] - us[0])
    lag = [np.prod([-us[m] / (us[j] - us[m]) for m in range(3) if m != j]) for j in range(3)]
    return {"ode": 0.5 * (y + ds[0]), "lin": lin, "quad": sum(w * d for w, d in zip(lag, ds))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", default="-6,-4,-2,0")
    ap.add_argument("--ends", default="9.1,7,6,5,4,3,2")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    starts = [None] + [float(v) for v in args.starts.split(",")]
    ends = [float(v) for v in args.ends.split(",")]
    proc, ratios = VP.linear(), collections.defaultdict(dict)
    for c in args.cases.split(","):
        mix = CASES[c]()
        x_T = proc.prior_sample(jax.random.key(0), ((64 if c == "image3072" else 256),)
                                + mix.event_shape)
        ref = np.asarray(exact_endpoints(mix, proc, x_T))
        den = mix.denoiser(proc)
        rmse = lambda x: float(np.sqrt(np.mean((np.asarray(x) - ref) ** 2)))
        for nfe in (5, 10):
            base = min(baseline_rmses(den, proc, x_T, rmse, nfe).values())
            for s in SAMPLERS:
                obj = resolve_sampler(s)
                go = jax.jit(lambda x, ts, obj=obj: (lambda xn: (xn, den(xn, ts[-1])))(
                    run(obj, den, proc, x, ts, jax.random.key(0), final_denoise=False)[0]))
                for lo, hi in itertools.product(starts, ends):
                    n = nfe - 1
                    lams = np.linspace(-10.0 if lo is None else lo, hi, n + (lo is None))
                    ts = np.asarray(proc.t_of_logsnr(lams), np.float64)
                    ts = ts if lo is None else np.concatenate([[proc.t_max], ts])
                    ts[0] = proc.t_max
                    ts[-1] = proc.t_min if hi > 9 else ts[-1]
                    outs = [go(x_T, jnp.asarray(ts[:len(ts) - j], jnp.float32)) for j in range(3)]
                    for name, x in finals(proc, den, outs, ts).items():
                        ratios[(s, lo, hi, name)][(c, nfe)] = rmse(x) / base
        print(f"{c}: done", flush=True)
    rows = sorted(((float(np.exp(np.mean(np.log(list(d.values()))))), k, d)
                   for k, d in ratios.items()), key=lambda r: r[0])
    for gm, k, d in rows[: args.top]:
        print(f"geo-mean {gm:.2f} max {max(d.values()):.2f} {k}: "
              + " ".join(f"{c}@{n} {v:.2f}" for (c, n), v in sorted(d.items())))


if __name__ == "__main__":
    main()
