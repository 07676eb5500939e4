"""Reflow (Liu et al. 2022) of the Fashion-MNIST flow-matching model: the 2-rectified flow learns
flow matching on the teacher's own (noise, sample) pairs, made on the fly by DPM-Solver++(2M)
(9 steps, 10 evaluations per pair), so its paths straighten and 1-2 Euler steps suffice.

    python -m diffusion_jax train --config experiments/fashion_mnist_flow_matching.py --workdir runs/fmatch
    python -m diffusion_jax train --config experiments/fashion_mnist_reflow.py --workdir runs/reflow \
        --config.reflow.teacher=runs/fmatch
    python -m diffusion_jax sample --workdir runs/reflow --steps 1 --out reflow.png
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "reflow"
    c.seed = 0
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="fashion_mnist", data_dir="", image_size=28, channels=1,
                             random_flip=False, num_classes=10))
    c.reflow = ConfigDict(dict(teacher="runs/fmatch", teacher_sampler="dpmpp_2m", teacher_steps=9,
                               sample_steps=1))
    c.loss = ConfigDict(dict(weighting="simple", t_sampler="uniform"))
    c.optimizer = ConfigDict(dict(lr=2e-4, warmup_steps=0, schedule="constant", weight_decay=0.0,
                                  grad_clip=1.0, grad_accum=1, b2=0.99))
    c.train = ConfigDict(dict(steps=2000, batch_size=64, ema_decay=0.999, ema_start=0,
                              log_every=50, ckpt_every=500, sample_every=0, keep=3,
                              time_limit_minutes=0.0, fid_every=0, fid_num=500,
                              fid_classifier="", fid_inception=""))
    c.sample = ConfigDict(dict(num=64))
    return c
