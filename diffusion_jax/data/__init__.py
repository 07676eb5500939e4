from diffusion_jax.data.pipeline import global_batch, image_pipeline
from diffusion_jax.data.sources import ArraySource, fashion_mnist, get_source

__all__ = ["ArraySource", "fashion_mnist", "get_source", "global_batch", "image_pipeline"]
