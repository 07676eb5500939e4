"""The Fashion-MNIST classifier whose penultimate features are the offline FID extractor, trained
by the same loop as every generative method (sharded, resumable).

    python -m diffusion_jax train --config experiments/fashion_mnist_classifier.py --workdir runs/clf
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "classifier"
    c.seed = 0
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="fashion_mnist", data_dir="", image_size=28, channels=1,
                             random_flip=True, num_classes=10))
    c.model = ConfigDict(dict(channels=32, feature_dim=128,
                              head="flatten"))  # "mean" (global pool): 92.2% at 4000 steps
    c.process = ConfigDict(dict(name=""))  # e.g. "vp_cosine": a noise-conditional (guidance) classifier
    c.augment = ConfigDict(dict(shift=0))  # random translations by up to this many pixels
    c.optimizer = ConfigDict(dict(lr=2e-3, warmup_steps=100, schedule="cosine", weight_decay=1e-4,
                                  grad_clip=0.0, grad_accum=1, b2=0.999))
    c.train = ConfigDict(dict(steps=3000, batch_size=128, ema_decay=0.0, log_every=50,
                              ckpt_every=1000, keep=2, time_limit_minutes=0.0))
    return c
