"""Latent diffusion: encoding on the fly inside the train step (the frozen autoencoder in the
method) against the same diffusion step on precomputed latents.

    python scripts/bench_latent_encoding.py --autoencoder runs/ae [--steps 20]
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffusion_jax.bench.train import bench_train  # noqa: E402
from diffusion_jax.config import load_config  # noqa: E402
from diffusion_jax.experiment import from_config  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--autoencoder", default="runs/ae")
ap.add_argument("--steps", type=int, default=20)
args = ap.parse_args()
cfg = load_config(str(ROOT / "experiments" / "fashion_mnist_latent.py"))
cfg.latent.autoencoder = args.autoencoder
exp = from_config(cfg)
fly = bench_train(exp, steps=args.steps)
h, w, c = exp.method.shape  # the latent shape: the same U-Net on latents given directly
del cfg["latent"]
cfg.data.image_size, cfg.data.channels = h, c
pre = bench_train(from_config(cfg), steps=args.steps)
print(f"on the fly {fly['step_s'] * 1e3:.1f} ms/step, precomputed {pre['step_s'] * 1e3:.1f} "
      f"ms/step: {fly['step_s'] / pre['step_s']:.2f}x")
