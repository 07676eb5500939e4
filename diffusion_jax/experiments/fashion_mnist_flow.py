"""Fashion-MNIST Glow: 2 levels x 8 steps (actnorm, LU 1x1 convolution, affine coupling), exact
bits/dim of the dequantised data, samples at temperature 0.7 (the CPU comparison run).

    python -m diffusion_jax train --config experiments/fashion_mnist_flow.py --workdir runs/flow
    python -m diffusion_jax likelihood --workdir runs/flow
    python -m diffusion_jax sample --workdir runs/flow --temperature 1.0 --out flow.png
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "flow"
    c.seed = 0
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="fashion_mnist", data_dir="", image_size=28, channels=1,
                             random_flip=False, num_classes=10))
    c.model = ConfigDict(dict(levels=2, steps=8, hidden=64))
    c.flow = ConfigDict(dict(temperature=0.7))
    c.optimizer = ConfigDict(dict(lr=1e-3, warmup_steps=200, schedule="constant", weight_decay=0.0,
                                  grad_clip=1.0, grad_accum=1, b2=0.999))
    c.train = ConfigDict(dict(steps=20000, batch_size=64, ema_decay=0.995, ema_start=200,
                              log_every=50, ckpt_every=1000, sample_every=0, keep=3,
                              time_limit_minutes=20.0, fid_every=0, fid_num=500,
                              fid_classifier="", fid_inception=""))
    c.sample = ConfigDict(dict(num=64))
    return c
