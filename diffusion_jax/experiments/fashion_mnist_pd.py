"""Progressive distillation (Salimans & Ho 2022) of the Fashion-MNIST demo model: the student
starts as the teacher (v-prediction on the cosine process, as the paper's) and halves its DDIM
step count each round, 64 -> 32 -> ... -> 1, in one resumable run.

    python -m diffusion_jax train --config experiments/fashion_mnist_ddpm.py --workdir runs/fm
    python -m diffusion_jax train --config experiments/fashion_mnist_pd.py --workdir runs/pd \
        --config.progressive.teacher=runs/fm
    python -m diffusion_jax sample --workdir runs/pd --steps 1 --out pd.png
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "progressive"
    c.seed = 0
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="fashion_mnist", data_dir="", image_size=28, channels=1,
                             random_flip=False, num_classes=10))
    c.progressive = ConfigDict(dict(teacher="runs/fm", start_steps=64, rounds=6, round_steps=500))
    c.optimizer = ConfigDict(dict(lr=2e-4, warmup_steps=0, schedule="constant", weight_decay=0.0,
                                  grad_clip=1.0, grad_accum=1, b2=0.99))
    c.train = ConfigDict(dict(steps=3000, batch_size=64, ema_decay=0.99, ema_start=0,
                              log_every=50, ckpt_every=500, sample_every=0, keep=3,
                              time_limit_minutes=0.0, fid_every=0, fid_num=500,
                              fid_classifier="", fid_inception=""))
    c.sample = ConfigDict(dict(num=64))
    return c
