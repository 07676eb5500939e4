"""Easy consistency tuning (ECT, Geng et al. 2024) of the Fashion-MNIST demo model: the consistency
model starts as the trained diffusion model and is tuned with consistency training's data pairs,
the gap between the two noise levels shrinking by ect_q per stage towards continuous time (at
step 0 the loss is the model's own denoising loss). The fix for consistency training from
scratch, which learns nothing at this budget.

    python -m diffusion_jax train --config experiments/fashion_mnist_ddpm.py --workdir runs/fm
    python -m diffusion_jax train --config experiments/fashion_mnist_ect.py --workdir runs/ect \
        --config.consistency.teacher=runs/fm
    python -m diffusion_jax sample --workdir runs/ect --steps 2 --out ect.png
"""

from pathlib import Path

from diffusion_jax.config import load_config


def get_config():
    c = load_config(str(Path(__file__).with_name("fashion_mnist_cd.py")))
    c.consistency.mode = "ect"
    c.consistency.loss = "pseudo_huber"
    c.consistency.ect_q = 2.0
    c.consistency.ect_stages = 8
    c.optimizer.lr = 1e-4
    c.train.ema_decay = 0.99
    return c
