"""U-Net vs DiT of matched size on Fashion-MNIST: img/s, GFLOP/step (XLA cost analysis), achieved
GFLOP/s against the matmul rate measured in the same run, per-device memory (XLA memory analysis),
with remat off/on and float32 vs bfloat16 compute. Prints a markdown table.

    python scripts/bench_architectures.py [--steps 10] [--batch 64]
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffusion_jax.bench.train import bench_train  # noqa: E402
from diffusion_jax.config import apply_override, load_config  # noqa: E402
from diffusion_jax.experiment import from_config  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--batch", type=int, default=64)
args = ap.parse_args()

rows = []
for arch, path in (("U-Net", "fashion_mnist_ddpm.py"), ("DiT", "fashion_mnist_dit.py")):
    for remat in ("none", "full"):
        for dtype in ("float32", "bfloat16"):
            cfg = load_config(str(ROOT / "experiments" / path))
            cfg.model.remat, cfg.model.dtype = remat, dtype  # keys the demo file leaves at default
            apply_override(cfg, f"train.batch_size={args.batch}")
            print(f"# {arch} remat={remat} {dtype}", flush=True)
            r = bench_train(from_config(cfg), args.steps)
            rows.append((arch, remat, dtype, r))

print("\n| model | params | remat | compute | img/s | model GFLOP/step | XLA GFLOP/step | "
      "achieved GFLOP/s | matmul GFLOP/s | utilisation | MB/device |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for arch, remat, dtype, r in rows:
    mem = "—" if r["per_device_mb"] is None else f"{r['per_device_mb']:.0f}"
    print(f"| {arch} | {r['params_M']:.2f}M | {remat} | {dtype} | {r['img_per_s']:.0f} | "
          f"{r['model_gflop_per_step']:.1f} | {r['xla_gflop_per_step']:.1f} | "
          f"{r['achieved_gflops']:.1f} | {r['matmul_gflops']:.0f} | {100 * r['mfu']:.0f}% | "
          f"{mem} |")
