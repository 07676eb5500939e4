"""14x14 -> 28x28 super-resolution on Fashion-MNIST: the U-Net sees the bilinearly upsampled
low-resolution image concatenated to its noisy input (SR3, Saharia et al. 2022); training makes the
low-resolution input by 2x2 box-filter downsampling of each batch.

    python -m diffusion_jax train --config experiments/fashion_mnist_sr.py --workdir runs/fm_sr
    python -m diffusion_jax sample --workdir runs/fm_sr --low-res test --num 64 --out sr.png
"""

from pathlib import Path

from diffusion_jax.config import load_config


def get_config():
    c = load_config(str(Path(__file__).with_name("fashion_mnist_ddpm.py")))
    c.model.low_res_size = 14
    c.train.steps = 800
    c.train.time_limit_minutes = 0.0
    return c
