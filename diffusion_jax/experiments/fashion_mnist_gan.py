"""Fashion-MNIST DCGAN: hinge loss, spectral normalisation on the discriminator, TTUR (the
discriminator learns twice as fast), Adam(0, 0.9), EMA of the generator (the CPU comparison run).

    python -m diffusion_jax train --config experiments/fashion_mnist_gan.py --workdir runs/gan
    python -m diffusion_jax sample --workdir runs/gan --num 64 --out gan.png

Other losses: --config.gan.loss=non_saturating, or --config.gan.loss=wgan_gp
--config.gan.n_critic=5 --config.model.spectral_norm=False; R1: --config.gan.r1_gamma=1.0.
Class-conditional (projection discriminator): --config.model.conditional=True.
Mode coverage while training: --config.train.fid_every=500 --config.train.fid_classifier=runs/classifier.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "gan"
    c.seed = 0
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="fashion_mnist", data_dir="", image_size=28, channels=1,
                             random_flip=False, num_classes=10))
    c.model = ConfigDict(dict(ch=32, d_ch=32, levels=2, spectral_norm=True, conditional=False))
    c.gan = ConfigDict(dict(loss="hinge", n_critic=1, gp_weight=10.0, r1_gamma=0.0, d_lr=4e-4,
                            z_dim=64))
    c.optimizer = ConfigDict(dict(lr=2e-4, warmup_steps=0, schedule="constant", weight_decay=0.0,
                                  grad_clip=0.0, grad_accum=1, b1=0.0, b2=0.9))
    c.train = ConfigDict(dict(steps=20000, batch_size=64, ema_decay=0.999, ema_start=500,
                              log_every=50, ckpt_every=1000, sample_every=0, keep=3,
                              time_limit_minutes=20.0, fid_every=0, fid_num=500,
                              fid_classifier="", fid_inception=""))
    c.sample = ConfigDict(dict(num=64))
    return c
