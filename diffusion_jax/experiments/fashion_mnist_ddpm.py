"""Fashion-MNIST, VP-cosine process, v-prediction, small U-Net: the CPU demo (~15 min on 2 cores).

    python -m diffusion_jax train --config experiments/fashion_mnist_ddpm.py --workdir runs/fm
    python -m diffusion_jax sample --workdir runs/fm --sampler dpmpp_2m --steps 20 --out grid.png

Scale up by changing numbers: e.g. --config.model.channels=128 --config.train.batch_size=256.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "diffusion"
    c.seed = 0
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="fashion_mnist", data_dir="", image_size=28, channels=1,
                             random_flip=False, num_classes=10))
    c.model = ConfigDict(dict(name="unet", channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                              attn_resolutions=(7,), num_heads=1, dropout=0.0, dtype="float32",
                              conditional=False, time_scale=1000.0,
                              cond_drop=0.1,     # CFG: labels/contexts dropped to the null one
                              context_dim=0,     # > 0: cross-attention to a [B, L, D] context
                              low_res_size=0))   # > 0: super-resolution from this size
    c.process = ConfigDict(dict(name="vp_cosine"))
    c.parameterization = ConfigDict(dict(name="v"))
    c.loss = ConfigDict(dict(weighting="simple", t_sampler="antithetic"))
    c.optimizer = ConfigDict(dict(lr=2e-3, warmup_steps=100, schedule="constant", weight_decay=0.0,
                                  grad_clip=1.0, grad_accum=1, b2=0.99))
    c.train = ConfigDict(dict(steps=1500, batch_size=64, ema_decay=0.995, ema_start=200,
                              log_every=20, ckpt_every=400, sample_every=0, keep=3,
                              time_limit_minutes=13.0,
                              fid_every=0, fid_num=500,          # training-time FD (0: off)
                              fid_classifier="", fid_inception=""))  # its feature extractor
    c.sample = ConfigDict(dict(sampler="dpmpp_2m", num_steps=20, num=64, grid="default",
                               guidance=None))  # CFG scale for class-conditional models
    return c
