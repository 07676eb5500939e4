"""The noise-conditional classifier of classifier guidance (Dhariwal & Nichol 2021): trained on
images noised by the demo's process at uniform random t, so it gives grad log p(y | x_t).

    python -m diffusion_jax train --config experiments/fashion_mnist_guidance_classifier.py \
        --workdir runs/guidance_clf
    python -m diffusion_jax sample --workdir runs/fm --classifier runs/guidance_clf \
        --classifier-scale 2 --labels all --num 100 --out guided.png
"""

from pathlib import Path

from diffusion_jax.config import load_config


def get_config():
    c = load_config(str(Path(__file__).with_name("fashion_mnist_classifier.py")))
    c.process.name = "vp_cosine"     # must match the diffusion model's process
    c.model.channels = 16
    c.data.random_flip = True
    c.train.steps = 1500
    return c
