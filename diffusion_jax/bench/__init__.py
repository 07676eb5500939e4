"""Exact-score test problems and the sampler benchmark."""

from diffusion_jax.bench import gmm
from diffusion_jax.bench.gmm import GaussianMixture

__all__ = ["gmm", "GaussianMixture"]
