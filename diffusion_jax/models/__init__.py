from diffusion_jax.models.mlp import MLP
from diffusion_jax.models.unet import UNet, UNetConfig, check_image_size

__all__ = ["MLP", "UNet", "UNetConfig", "check_image_size"]
