from diffusion_jax.train.state import TrainState, create_state, make_optimizer
from diffusion_jax.train.step import make_train_step

__all__ = ["TrainState", "create_state", "make_optimizer", "make_train_step"]
