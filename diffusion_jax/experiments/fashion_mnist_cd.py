"""Consistency distillation (Song et al. 2023) of the Fashion-MNIST demo model: the student starts
as the teacher, learns to map every point of the teacher's probability-flow ODE to its end, and
samples in 1, 2 or 4 network evaluations. The teacher's one ODE step is the project's Heun sampler.

    python -m diffusion_jax train --config experiments/fashion_mnist_ddpm.py --workdir runs/fm
    python -m diffusion_jax train --config experiments/fashion_mnist_cd.py --workdir runs/cd \
        --config.consistency.teacher=runs/fm
    python -m diffusion_jax sample --workdir runs/cd --steps 2 --out cd.png
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "consistency"
    c.seed = 0
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="fashion_mnist", data_dir="", image_size=28, channels=1,
                             random_flip=False, num_classes=10))
    c.consistency = ConfigDict(dict(mode="cd", teacher="runs/fm", solver="heun", num_scales=18,
                                    loss="l2", sample_steps=2))
    c.optimizer = ConfigDict(dict(lr=2e-4, warmup_steps=0, schedule="constant", weight_decay=0.0,
                                  grad_clip=1.0, grad_accum=1, b2=0.99))
    c.train = ConfigDict(dict(steps=3000, batch_size=64, ema_decay=0.95, ema_start=0,
                              log_every=50, ckpt_every=500, sample_every=0, keep=3,
                              time_limit_minutes=13.0, fid_every=0, fid_num=500,
                              fid_classifier="", fid_inception=""))
    c.sample = ConfigDict(dict(num=64))
    return c
