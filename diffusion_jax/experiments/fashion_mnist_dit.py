"""Fashion-MNIST with a DiT denoiser (Peebles & Xie 2023): patches of 4x4 (49 tokens), 6 blocks of
width 64 with adaLN-Zero (0.33M parameters, like the demo U-Net's 0.28M); otherwise the demo experiment (VP-cosine, v-prediction).

    python -m diffusion_jax train --config experiments/fashion_mnist_dit.py --workdir runs/dit

Remat and mixed precision: --config.model.remat=full --config.model.dtype=bfloat16.
"""

from pathlib import Path

from ml_collections import ConfigDict

from diffusion_jax.config import load_config


def get_config() -> ConfigDict:
    c = load_config(str(Path(__file__).with_name("fashion_mnist_ddpm.py")))
    c.model = ConfigDict(dict(name="dit", patch_size=4, hidden_size=64, depth=6, num_heads=4,
                              mlp_ratio=4.0, dtype="float32", conditional=False, cond_drop=0.1,
                              time_scale=1000.0, remat="none"))
    c.optimizer.lr = 1e-3
    return c
