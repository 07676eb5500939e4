"""Consistency training without a teacher (iCT: Song & Dhariwal 2023): pseudo-Huber distance,
lognormal choice of noise levels, scales doubling from 10 to 1280; the demo's U-Net and process.

    python -m diffusion_jax train --config experiments/fashion_mnist_ct.py --workdir runs/ct
    python -m diffusion_jax sample --workdir runs/ct --steps 1 --out ct.png
"""

from pathlib import Path

from ml_collections import ConfigDict

from diffusion_jax.config import load_config


def get_config() -> ConfigDict:
    base = load_config(str(Path(__file__).with_name("fashion_mnist_ddpm.py")))
    c = ConfigDict()
    c.method = "consistency"
    c.seed = 0
    c.mesh = base.mesh
    c.data = base.data
    c.model = base.model
    c.process = base.process
    c.parameterization = base.parameterization
    c.consistency = ConfigDict(dict(mode="ct", loss="pseudo_huber", s0=10, s1=1280,
                                    sample_steps=2))
    c.optimizer = base.optimizer
    c.train = base.train
    c.train.ema_decay = 0.999
    c.train.steps = 10000
    c.sample = ConfigDict(dict(num=64))
    return c
