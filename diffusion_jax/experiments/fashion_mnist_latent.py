"""Latent diffusion on Fashion-MNIST: a small U-Net on the 7x7x4 latents of the autoencoder in
runs/ae (experiments/fashion_mnist_autoencoder.py), scaled to unit variance on the training data;
`sample` and `eval` decode to pixels.

    python -m diffusion_jax train --config experiments/fashion_mnist_latent.py --workdir runs/ldm \
        --config.latent.autoencoder=runs/ae
"""

from pathlib import Path

from ml_collections import ConfigDict

from diffusion_jax.config import load_config


def get_config() -> ConfigDict:
    c = load_config(str(Path(__file__).with_name("fashion_mnist_ddpm.py")))
    c.latent = ConfigDict(dict(autoencoder="runs/ae",
                               scale=0.0))  # 0: 1/std of the training latents, measured
    c.model.channels = 64
    c.model.channel_mult = (1,)        # 7x7 latents: no downsampling
    c.model.attn_resolutions = (7,)
    c.model.num_res_blocks = 2
    return c
