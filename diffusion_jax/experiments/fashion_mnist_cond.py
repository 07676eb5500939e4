"""Class-conditional Fashion-MNIST with classifier-free guidance: labels through the U-Net's class
embedding, dropped to the null class 10% of the time, so one network is both the conditional and
the unconditional denoiser.

    python -m diffusion_jax train --config experiments/fashion_mnist_cond.py --workdir runs/fm_cond
    python -m diffusion_jax sample --workdir runs/fm_cond --labels all --guidance 2 --num 100 \
        --out cond_grid.png          # one row per class
"""

from pathlib import Path

from diffusion_jax.config import load_config


def get_config():
    c = load_config(str(Path(__file__).with_name("fashion_mnist_ddpm.py")))
    c.model.conditional = True
    c.model.cond_drop = 0.1
    c.train.time_limit_minutes = 0.0  # stop by steps
    c.sample.num = 100              # 10 x 10: one row per class
    c.sample.guidance = 2.0         # 0 unconditional, 1 conditional, > 1 guided
    return c
