"""Sampling img/s of trained diffusion workdirs (pixel, latent, DiT) at equal NFE with
DPM-Solver++(2M), compile excluded (best of 2 timed calls).

    python scripts/bench_sampling_speed.py runs/unet runs/ldm runs/dit [--nfe 20 --num 500]
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from diffusion_jax.samplers import steps_for_budget  # noqa: E402
from diffusion_jax.workdir import load  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("workdirs", nargs="+")
ap.add_argument("--nfe", type=int, default=20)
ap.add_argument("--num", type=int, default=500)
args = ap.parse_args()
for wd in args.workdirs:
    exp, params, _ = load(wd)
    m = exp.method
    fn = jax.jit(m.sample_fn("dpmpp_2m", steps_for_budget("dpmpp_2m", args.nfe), "default"))
    x_T = m.process.prior_sample(jax.random.key(0), (args.num,) + m.shape)
    jax.block_until_ready(fn(params, x_T, jax.random.key(1)))
    best = float("inf")
    for r in range(2):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, x_T, jax.random.key(2 + r)))
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"workdir": wd, "nfe": args.nfe, "model_shape": list(m.shape),
                      "img_per_s": round(args.num / best, 1)}))
