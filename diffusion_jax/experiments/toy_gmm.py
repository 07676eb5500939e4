"""A 2-D ring of 8 Gaussians with an MLP denoiser: exact scores are known, so samples and
likelihoods can be compared with the truth. Trains in about a minute on a CPU.

    python -m diffusion_jax train --config experiments/toy_gmm.py --workdir runs/ring
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "diffusion"
    c.seed = 0
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="gmm:ring", data_dir="", dim=2, image_size=0, channels=0,
                             random_flip=False, num_classes=8))
    c.model = ConfigDict(dict(name="mlp", hidden=128, depth=3, time_scale=1000.0,
                              conditional=False))
    c.process = ConfigDict(dict(name="vp_linear"))
    c.parameterization = ConfigDict(dict(name="eps"))
    c.loss = ConfigDict(dict(weighting="simple", t_sampler="antithetic"))
    c.optimizer = ConfigDict(dict(lr=1e-3, warmup_steps=100, schedule="cosine", weight_decay=0.0,
                                  grad_clip=1.0, grad_accum=1, b2=0.999))
    c.train = ConfigDict(dict(steps=3000, batch_size=256, ema_decay=0.999, ema_start=0,
                              log_every=50, ckpt_every=1000, sample_every=0, keep=2,
                              time_limit_minutes=0.0))
    c.sample = ConfigDict(dict(sampler="dpmpp_2m", num_steps=20, num=2048, grid="default"))
    return c
