"""Fashion-MNIST PixelCNN: gated blocks on shifted convolutions (no blind spot), a mixture of 5
discretized logistics per pixel, exact bits/dim of the 8-bit data; sampling draws the 784
pixels one by one (784 network evaluations per image), the family comparison's slowest sampler.

    python -m diffusion_jax train --config experiments/fashion_mnist_autoregressive.py \
        --workdir runs/ar
    python -m diffusion_jax likelihood --workdir runs/ar
    python -m diffusion_jax sample --workdir runs/ar --num 16 --out ar.png
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "autoregressive"
    c.seed = 0
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="fashion_mnist", data_dir="", image_size=28, channels=1,
                             random_flip=False, num_classes=10))
    c.model = ConfigDict(dict(channels=32, blocks=4, num_mix=5))
    c.autoregressive = ConfigDict(dict(temperature=1.0))
    c.optimizer = ConfigDict(dict(lr=2e-3, warmup_steps=100, schedule="constant", weight_decay=0.0,
                                  grad_clip=1.0, grad_accum=1, b2=0.999))
    c.train = ConfigDict(dict(steps=20000, batch_size=64, ema_decay=0.995, ema_start=200,
                              log_every=50, ckpt_every=500, sample_every=0, keep=3,
                              time_limit_minutes=10.0, fid_every=0, fid_num=500,
                              fid_classifier="", fid_inception=""))
    c.sample = ConfigDict(dict(num=16))
    return c
