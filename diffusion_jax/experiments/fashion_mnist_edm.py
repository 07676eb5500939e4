"""Fashion-MNIST with the EDM process, preconditioning, log-normal sigma and Heun sampling.

    python -m diffusion_jax train --config experiments/fashion_mnist_edm.py --workdir runs/fm_edm
"""

from pathlib import Path

from diffusion_jax.config import load_config


def get_config():
    c = load_config(str(Path(__file__).with_name("fashion_mnist_ddpm.py")))
    c.process.name = "edm"
    c.parameterization.name = "edm"
    c.model.time_scale = 250.0  # c_noise = log(sigma)/4 spans ~[-1.6, 1.1]
    c.loss.weighting = "edm"
    c.loss.t_sampler = "lognormal"
    c.sample.sampler = "heun"
    c.sample.num_steps = 12
    c.sample.grid = "karras"
    return c
