"""CIFAR-10 at TPU scale for the gan family: the Fashion-MNIST experiment, widened (prepare the
data with `tfds build cifar10 --file_format=array_record` where TFDS can download).

    python -m diffusion_jax train --config experiments/cifar10_gan.py --workdir gs://BUCKET/c10_gan
"""

from pathlib import Path

from diffusion_jax.config import cifar10_tpu, load_config


def get_config():
    c = cifar10_tpu(load_config(str(Path(__file__).with_name("fashion_mnist_gan.py"))))
    c.model.ch = 128
    c.model.d_ch = 128
    c.model.levels = 3          # 4x4 -> 32x32
    c.gan.z_dim = 128
    return c
