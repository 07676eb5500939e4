from diffusion_jax.cli import run

run()
