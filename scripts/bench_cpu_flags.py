"""Compare XLA:CPU settings on the train step: each setting in its own process (XLA reads its
flags once), settings alternated for ``--rounds`` rounds, and the median step time reported.

    python scripts/bench_cpu_flags.py --config experiments/fashion_mnist_ddpm.py --rounds 2
    python scripts/bench_cpu_flags.py --matched     # the 3.9M U-Net at 32x32 of the speed issue

Settings: ``off`` (XLA's default, ``DIFFUSION_JAX_CPU_FLAGS=0``), ``auto`` (what the package
applies), and narrower values of ``--xla_cpu_experimental_ynn_fusion_type``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

MATCHED = ["--config.data.image_size=32", "--config.model.channels=32",
           "--config.model.channel_mult=(1,2,4)", "--config.model.num_res_blocks=2",
           "--config.model.attn_resolutions=(8,)", "--config.model.num_heads=16",
           "--config.train.batch_size=64"]
SETTINGS = {"off": None, "auto": "", "-individual_convolution": "-individual_convolution",
            "-individual_dot": "-individual_dot"}


def run(setting: str, config: str, overrides: list[str], steps: int) -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    value = SETTINGS[setting]
    if value is None:
        env["DIFFUSION_JAX_CPU_FLAGS"] = "0"
    elif setting != "auto":
        env["XLA_FLAGS"] = f"--xla_cpu_experimental_ynn_fusion_type={value}"
    out = subprocess.run([sys.executable, "-m", "diffusion_jax", "bench-train", "--config", config,
                          "--steps", str(steps), *overrides], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="experiments/fashion_mnist_ddpm.py")
    ap.add_argument("--matched", action="store_true", help="the speed issue's 3.9M U-Net, 32x32")
    ap.add_argument("--settings", default="off,auto,-individual_convolution,-individual_dot")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    overrides = MATCHED if args.matched else []
    names = args.settings.split(",")
    results = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            res = run(n, args.config, overrides, args.steps)
            results[n].append(res)
            print(f"round {r} {n:>26}: {res['step_s']:.3f} s/step, {res['img_per_s']:.1f} img/s, "
                  f"compile {res['compile_s']:.1f} s", flush=True)
    base = statistics.median(x["step_s"] for x in results["off"]) if "off" in results else None
    print("\n| setting | s/step (median) | img/s | speed-up vs off | GFLOP/s | matmul GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for n in names:
        s = statistics.median(x["step_s"] for x in results[n])
        b = results[n][0]["batch"]
        g = statistics.median(x["achieved_gflops"] for x in results[n])
        mm = statistics.median(x["matmul_gflops"] for x in results[n])
        up = f"{base / s:.2f}x" if base else "-"
        print(f"| {n} | {s:.3f} | {b / s:.1f} | {up} | {g:.1f} | {mm:.1f} |")


if __name__ == "__main__":
    main()
