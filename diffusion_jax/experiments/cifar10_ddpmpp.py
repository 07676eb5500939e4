"""CIFAR-10 at TPU scale: a DDPM++-sized U-Net (~36M parameters), VP-linear, eps-prediction.

Prepare the data once where TFDS can download (`tfds build cifar10 --file_format=array_record`),
then on every host of the pod slice:

    python -m diffusion_jax train --config experiments/cifar10_ddpmpp.py --workdir gs://BUCKET/c10
"""

from pathlib import Path

from diffusion_jax.config import load_config


def get_config():
    c = load_config(str(Path(__file__).with_name("fashion_mnist_ddpm.py")))
    c.data.dataset = "tfds:cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.random_flip = True
    c.model.channels = 128
    c.model.channel_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (16,)
    c.model.dropout = 0.1
    c.model.dtype = "bfloat16"
    c.process.name = "vp_linear"
    c.parameterization.name = "eps"
    c.optimizer.lr = 2e-4
    c.optimizer.warmup_steps = 5000
    c.optimizer.b2 = 0.999
    c.train.steps = 800_000
    c.train.batch_size = 128
    c.train.ema_decay = 0.9999
    c.train.ema_start = 0
    c.train.log_every = 100
    c.train.ckpt_every = 10_000
    c.train.sample_every = 50_000
    c.train.time_limit_minutes = 0.0
    c.sample.num_steps = 20
    return c
