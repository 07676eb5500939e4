"""Training: the loop (any method), metric logging."""

from diffusion_jax.train.loop import train

__all__ = ["train"]
