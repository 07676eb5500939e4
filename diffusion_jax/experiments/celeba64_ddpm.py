"""CelebA 64x64 at TPU scale (ADM-like U-Net, ~60M parameters), VP-cosine, v-prediction.

Prepare `celeb_a` as ArrayRecord with TFDS where it can download, resized to 64x64 (images of
another size are rejected by the U-Net's size check), then on every host:

    python -m diffusion_jax train --config experiments/celeba64_ddpm.py --workdir gs://BUCKET/celeba64 \
        --distributed --config.mesh.data=-1 --config.mesh.fsdp=4
"""

from pathlib import Path

from diffusion_jax.config import load_config


def get_config():
    c = load_config(str(Path(__file__).with_name("fashion_mnist_ddpm.py")))
    c.data.dataset = "tfds:celeb_a"
    c.data.image_size = 64
    c.data.channels = 3
    c.data.random_flip = True
    c.model.channels = 128
    c.model.channel_mult = (1, 2, 3, 4)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (16, 8)
    c.model.num_heads = 4
    c.model.dropout = 0.1
    c.model.dtype = "bfloat16"
    c.optimizer.lr = 1e-4
    c.optimizer.warmup_steps = 5000
    c.optimizer.b2 = 0.999
    c.train.steps = 500_000
    c.train.batch_size = 256
    c.train.ema_decay = 0.9999
    c.train.ema_start = 0
    c.train.log_every = 100
    c.train.ckpt_every = 10_000
    c.train.sample_every = 50_000
    c.train.time_limit_minutes = 0.0
    return c
