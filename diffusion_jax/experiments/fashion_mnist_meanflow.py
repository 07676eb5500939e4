"""MeanFlow (Geng et al. 2025) on Fashion-MNIST, from scratch: the demo U-Net, class-conditional,
learns the average velocity u(z, r, t) of the flow-matching ODE with classifier-free guidance
folded into training (omega), and samples in 1 or 2 network evaluations.

    python -m diffusion_jax train --config experiments/fashion_mnist_meanflow.py --workdir runs/meanflow
    python -m diffusion_jax sample --workdir runs/meanflow --steps 1 --labels all --out mf.png
"""

from pathlib import Path

from ml_collections import ConfigDict

from diffusion_jax.config import load_config


def get_config() -> ConfigDict:
    c = load_config(str(Path(__file__).with_name("fashion_mnist_ddpm.py")))
    c.method = "meanflow"
    del c.process, c.parameterization, c.loss
    c.model.conditional = True
    c.model.cond_drop = 0.1
    c.model.time_scale = 100.0  # u's time derivative enters the target: a smoother embedding
    c.meanflow = ConfigDict(dict(ratio=0.25, p_mean=-0.4, p_std=1.0, norm_p=1.0, norm_c=1e-3,
                                 omega=2.0, sample_steps=1))
    c.train.ema_decay = 0.999
    c.sample = ConfigDict(dict(num=64))
    return c
