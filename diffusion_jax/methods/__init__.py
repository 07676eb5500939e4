"""Methods: what each family (diffusion, the classifier, ...) adds to the engine; see ``base``."""

from diffusion_jax.methods.base import Method
from diffusion_jax.methods.classifier import ClassifierMethod
from diffusion_jax.methods.diffusion import Diffusion
from diffusion_jax.methods.flow import FlowMethod
from diffusion_jax.methods.gan import GAN
from diffusion_jax.methods.vae import VAEMethod
from diffusion_jax.methods.state import TrainState, create_state, init_state, state_shardings

__all__ = ["Method", "ClassifierMethod", "Diffusion", "FlowMethod", "GAN", "VAEMethod", "TrainState", "create_state", "init_state",
           "state_shardings"]
