"""The autoencoder latent diffusion trains on: the VAE with a spatial 7x7x4 latent and a small KL
weight (a regulariser, not a generative prior), Fashion-MNIST.

    python -m diffusion_jax train --config experiments/fashion_mnist_autoencoder.py --workdir runs/ae
    python -m diffusion_jax train --config experiments/fashion_mnist_latent.py --workdir runs/ldm
"""

from pathlib import Path

from ml_collections import ConfigDict

from diffusion_jax.config import load_config


def get_config() -> ConfigDict:
    c = load_config(str(Path(__file__).with_name("fashion_mnist_vae.py")))
    c.model.latent_dim = 0
    c.model.latent_channels = 4
    c.vae.beta = 1e-3
    c.vae.kl_warmup = 0
    c.train.steps = 3000
    c.train.time_limit_minutes = 8.0
    return c
