"""Samplers: each a frozen dataclass run by one ``lax.scan`` driver (see ``base`` and ``driver``).

``SAMPLERS`` (``registry.py``) is the one name -> constructor table used by ``sample`` and the CLI.
"""

from diffusion_jax.samplers.base import Carry, Context, Sampler
from diffusion_jax.samplers.ddim import DDIM, DDPM
from diffusion_jax.samplers.deis import DEIS
from diffusion_jax.samplers.dpm_solver import DPMSolver, DPMSolverPP, DPMSolverPP2S, DPMSolverPPSDE
from diffusion_jax.samplers.driver import (cache_schedule, check_cacheable, invert,
                                          resolve_sampler, run, sample, steps_for_budget,
                                          total_nfe)
from diffusion_jax.samplers.grids import DEFAULT_GRIDS, GRIDS, default_grid, make_grid
from diffusion_jax.samplers.heun import Euler, Heun
from diffusion_jax.samplers.learned_grid import optimize_grid, optimize_solver
from diffusion_jax.samplers.learned_pc import LearnedPC
from diffusion_jax.samplers.ode import AdaptiveODE, ODESolver, dopri5
from diffusion_jax.samplers.plms import PLMS
from diffusion_jax.samplers.registry import SAMPLERS
from diffusion_jax.samplers.restart import Restart
from diffusion_jax.samplers.sde import (AnnealedLangevin, EulerMaruyama, PredictorCorrector,
                                        ReverseDiffusion)
from diffusion_jax.samplers.unipc import UniPC

__all__ = ["SAMPLERS", "GRIDS", "DEFAULT_GRIDS", "default_grid", "Carry", "Context", "Sampler", "make_grid", "run", "sample", "invert", "total_nfe",
           "resolve_sampler", "steps_for_budget", "dopri5", "cache_schedule", "check_cacheable", "optimize_grid", "optimize_solver"] + [c.__name__ for c in (
    DDIM, DDPM, DEIS, DPMSolver, LearnedPC, DPMSolverPP, DPMSolverPP2S, DPMSolverPPSDE, Euler, Heun, AdaptiveODE,
    ODESolver, PLMS, Restart, AnnealedLangevin, EulerMaruyama, PredictorCorrector, ReverseDiffusion, UniPC)]
