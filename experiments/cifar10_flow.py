"""CIFAR-10 at TPU scale for the flow family: the Fashion-MNIST experiment, widened (prepare the
data with `tfds build cifar10 --file_format=array_record` where TFDS can download).

    python -m diffusion_jax train --config experiments/cifar10_flow.py --workdir gs://BUCKET/c10_flow
"""

from pathlib import Path

from diffusion_jax.config import load_config


def get_config():
    c = load_config(str(Path(__file__).with_name("fashion_mnist_flow.py")))
    c.data.dataset = "tfds:cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.random_flip = True
    c.mesh = {"data": -1, "fsdp": 1}
    c.train.steps = 200_000
    c.train.batch_size = 256
    c.train.log_every = 100
    c.train.ckpt_every = 5000
    c.train.sample_every = 10_000
    c.train.time_limit_minutes = 0.0
    c.model.levels = 3
    c.model.steps = 32          # Glow's CIFAR-10 depth
    c.model.hidden = 512
    c.optimizer.warmup_steps = 5000
    return c
