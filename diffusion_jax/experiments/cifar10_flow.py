"""CIFAR-10 at TPU scale for the flow family: the Fashion-MNIST experiment, widened (prepare the
data with `tfds build cifar10 --file_format=array_record` where TFDS can download).

    python -m diffusion_jax train --config experiments/cifar10_flow.py --workdir gs://BUCKET/c10_flow
"""

from pathlib import Path

from diffusion_jax.config import cifar10_tpu, load_config


def get_config():
    c = cifar10_tpu(load_config(str(Path(__file__).with_name("fashion_mnist_flow.py"))))
    c.model.levels = 3
    c.model.steps = 32          # Glow's CIFAR-10 depth
    c.model.hidden = 512
    c.optimizer.warmup_steps = 5000
    return c
