"""Fashion-MNIST VAE: convolutional encoder/decoder, 32-d latent, discretized logistic likelihood
of the 8-bit pixels, KL warm-up over the first 1000 steps (the CPU comparison run).

    python -m diffusion_jax train --config experiments/fashion_mnist_vae.py --workdir runs/vae
    python -m diffusion_jax likelihood --workdir runs/vae          # ELBO and IWAE bits/dim
    python -m diffusion_jax sample --workdir runs/vae --interpolate 10 --out slerp.png

The autoencoder latent diffusion trains on: --config.model.latent_dim=0 (a spatial
7x7x latent_channels latent) --config.vae.beta=1e-3.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "vae"
    c.seed = 0
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="fashion_mnist", data_dir="", image_size=28, channels=1,
                             random_flip=False, num_classes=10))
    c.model = ConfigDict(dict(ch=32, levels=2, latent_dim=32, latent_channels=4))
    c.vae = ConfigDict(dict(beta=1.0, kl_warmup=1000, iw_samples=64))
    c.optimizer = ConfigDict(dict(lr=1e-3, warmup_steps=100, schedule="constant", weight_decay=0.0,
                                  grad_clip=1.0, grad_accum=1, b2=0.99))
    c.train = ConfigDict(dict(steps=20000, batch_size=64, ema_decay=0.995, ema_start=200,
                              log_every=50, ckpt_every=1000, sample_every=0, keep=3,
                              time_limit_minutes=20.0, fid_every=0, fid_num=500,
                              fid_classifier="", fid_inception=""))
    c.sample = ConfigDict(dict(num=64))
    return c
