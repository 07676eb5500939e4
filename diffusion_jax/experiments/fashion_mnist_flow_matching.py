"""Flow matching / rectified flow on Fashion-MNIST (Lipman et al. 2022; Liu et al. 2022): the
demo U-Net on the linear interpolant ``x_t = (1 - t) x0 + t eps`` predicting the velocity
``eps - x0``, with SD3's logit-normal times (Esser et al. 2024). Every sampler runs on it (Euler
on the velocity is DDIM here); `reflow` straightens it for 1-step sampling
(experiments/fashion_mnist_reflow.py).

    python -m diffusion_jax train --config experiments/fashion_mnist_flow_matching.py --workdir runs/fmatch
    python -m diffusion_jax sample --workdir runs/fmatch --sampler euler --nfe 20 --out fm.png
"""

from pathlib import Path

from ml_collections import ConfigDict

from diffusion_jax.config import load_config


def get_config() -> ConfigDict:
    c = load_config(str(Path(__file__).with_name("fashion_mnist_ddpm.py")))
    c.process = ConfigDict(dict(name="flow"))
    c.parameterization = ConfigDict(dict(name="velocity"))
    c.loss = ConfigDict(dict(weighting="simple", t_sampler="logit_normal", p_mean=0.0,
                             p_std=1.0))
    return c
