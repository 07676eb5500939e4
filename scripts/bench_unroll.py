"""Scan against unrolled steps for the sampler on XLA:CPU, forward (sampling) and differentiated
(``optimize_grid``'s loss): the demo U-Net at random initialisation (speed does not depend on the
weights), a batch of noise, seconds per call after the compile, one run, both variants side by side.

    python scripts/bench_unroll.py [--batch 64]
"""

import argparse
import time

import jax
import jax.numpy as jnp

from diffusion_jax.config import load_config
from diffusion_jax.experiment import from_config
from diffusion_jax.samplers import make_grid, resolve_sampler
from diffusion_jax.samplers.driver import run


def _time(f, *args, rounds: int = 3) -> tuple[float, float]:
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return first, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--config", default="experiments/fashion_mnist_ddpm.py")
    args = ap.parse_args()
    exp = from_config(load_config(args.config))
    m = exp.method
    params = m.model.init(jax.random.key(0), *m.example_inputs())["params"]
    den = m.denoiser(params)
    x = m.process.prior_sample(jax.random.key(1), (args.batch,) + exp.shape)
    print("| sampler | steps | pass | scan s/call | unrolled s/call | ratio |")
    print("|---|---|---|---|---|---|")
    for name, steps in [("unipc", 4), ("dpmpp_2m", 7)]:
        obj = resolve_sampler(name)
        ts0 = jnp.asarray(make_grid(m.process, steps, "logsnr"), x.dtype)
        for kind in ("forward", "gradient"):
            per = {}
            for unroll in (1, True):
                def loss(d, unroll=unroll):
                    y, _ = run(obj, den, m.process, x, ts0.at[1:-1].add(d), jax.random.key(0),
                               unroll=unroll)
                    return jnp.mean(y ** 2)
                f = jax.jit(jax.value_and_grad(loss) if kind == "gradient" else loss)
                per[unroll] = _time(f, jnp.zeros(steps - 1, x.dtype))[1]
            print(f"| {name} | {steps} | {kind} | {per[1]:.3f} | {per[True]:.3f} | "
                  f"{per[1] / per[True]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
