"""Which grid each sampler should get by default: every deterministic sampler x {uniform, logsnr,
quadratic, karras} at NFE 5, 6, 8, 10 on the exact-score cases of ``bench-samplers`` (RMSE to the
exact PF-ODE endpoint at sigma = 0, NFE counted with the final call). Prints, per sampler and
grid, the geometric mean of RMSE / (best RMSE of all samplers and grids at that case and NFE).
A choice enters ``samplers.DEFAULT_GRIDS`` only when it also wins on a trained model (``eval
--grids``): quadratic wins here and loses on the demo model, see the README.

    python scripts/bench_default_grids.py [--batch 256] [--out grids.json]
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.bench.sampler_bench import CASES
from diffusion_jax.processes import VP
from diffusion_jax.samplers import sample, steps_for_budget

SAMPLERS = ["ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "dpm_solver_2", "unipc", "plms", "deis",
            "ipndm_v", "heun"]
GRIDS = ["uniform", "logsnr", "quadratic", "karras"]
NFES = (5, 6, 8, 10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    proc, rmse = VP.linear(), {}
    for case, make in CASES.items():
        mix = make()
        x_T = proc.prior_sample(jax.random.key(0), (args.batch,) + mix.event_shape)
        with jax.enable_x64(True):
            end = VP.linear(t_min=1e-9)
            ref = np.asarray(sample(mix.denoiser(end), end, x_T.astype(jnp.float64),
                                    sampler="ode_dopri5", ts=[1.0, 1e-9], final="denoise",
                                    sampler_kwargs=dict(rtol=1e-9, atol=1e-9)))
        den = mix.denoiser(proc)
        for s in SAMPLERS:
            for g in GRIDS:
                for nfe in NFES:
                    steps = steps_for_budget(s, nfe)
                    if steps is None:
                        continue
                    fn = jax.jit(lambda x, s=s, g=g, n=steps: sample(den, proc, x, sampler=s,
                                                                    num_steps=n, grid=g))
                    rmse[(case, s, g, nfe)] = float(np.sqrt(np.mean((np.asarray(fn(x_T)) - ref) ** 2)))
    best = {(c, n): min(v for (c2, _, _, n2), v in rmse.items() if (c2, n2) == (c, n))
            for c in CASES for n in NFES}
    print("sampler       " + "  ".join(f"{g:>9s}" for g in GRIDS) + "   best")
    for s in SAMPLERS:
        row = {g: float(np.exp(np.mean([np.log(v / best[(c, n)]) for (c, s2, g2, n), v in rmse.items()
                                        if s2 == s and g2 == g]))) for g in GRIDS}
        print(f"{s:12s}  " + "  ".join(f"{row[g]:9.2f}" for g in GRIDS) + f"   {min(row, key=row.get)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"|".join(map(str, k)): v for k, v in rmse.items()}, f, indent=1)


if __name__ == "__main__":
    main()
