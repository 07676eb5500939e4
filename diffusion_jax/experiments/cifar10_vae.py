"""CIFAR-10 at TPU scale for the vae family: the Fashion-MNIST experiment, widened (prepare the
data with `tfds build cifar10 --file_format=array_record` where TFDS can download).

    python -m diffusion_jax train --config experiments/cifar10_vae.py --workdir gs://BUCKET/c10_vae
"""

from pathlib import Path

from diffusion_jax.config import cifar10_tpu, load_config


def get_config():
    c = cifar10_tpu(load_config(str(Path(__file__).with_name("fashion_mnist_vae.py"))))
    c.model.ch = 64
    c.model.levels = 3
    c.model.latent_dim = 256
    c.vae.kl_warmup = 10_000
    return c
