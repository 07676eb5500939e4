"""Methods: what each family adds to the engine (the contract: ``base``). Each family's file
holds its method, its settings and its ``build(ctx)``; ``experiment.METHODS`` lists them."""

from diffusion_jax.methods.autoregressive import AutoregressiveMethod
from diffusion_jax.methods.base import Method, MethodBase, SampleRequest, Sampling, SamplingEnv
from diffusion_jax.methods.classifier import ClassifierMethod
from diffusion_jax.methods.consistency import ConsistencyMethod
from diffusion_jax.methods.diffusion import Diffusion
from diffusion_jax.methods.flow import FlowMethod
from diffusion_jax.methods.gan import GAN
from diffusion_jax.methods.latent import LatentDiffusion
from diffusion_jax.methods.meanflow import MeanFlow
from diffusion_jax.methods.progressive import ProgressiveDistillation
from diffusion_jax.methods.reflow import Reflow
from diffusion_jax.methods.state import TrainState, init_state, state_shardings
from diffusion_jax.methods.vae import VAEMethod

__all__ = ["Method", "MethodBase", "SampleRequest", "Sampling", "SamplingEnv",
           "AutoregressiveMethod", "ClassifierMethod", "ConsistencyMethod", "Diffusion",
           "FlowMethod", "GAN", "LatentDiffusion", "MeanFlow", "ProgressiveDistillation", "Reflow", "VAEMethod", "TrainState", "init_state",
           "state_shardings"]
