"""diffusion_jax: diffusion and score-based generative models in JAX/Flax.

    import diffusion_jax as dj
    process = dj.processes.VP.linear()
    x0 = dj.sample(denoise, process, x_T, sampler="dpmpp_2m", num_steps=10, key=key)
"""

from diffusion_jax import parameterization, processes, samplers
from diffusion_jax.bench import gmm
from diffusion_jax.parameterization import make_denoiser
from diffusion_jax.samplers import GRIDS, SAMPLERS, make_grid, sample, total_nfe

__version__ = "0.1.0"

__all__ = ["processes", "parameterization", "samplers", "gmm", "sample", "SAMPLERS", "GRIDS",
           "make_grid", "total_nfe", "make_denoiser", "__version__"]
