"""``SAMPLERS``: the one name -> constructor table of samplers (``sample``, the CLI and the
experiment's ``sample`` section read it)."""

from functools import partial

from diffusion_jax.samplers.ddim import DDIM, DDPM
from diffusion_jax.samplers.deis import DEIS
from diffusion_jax.samplers.dpm_solver import DPMSolver, DPMSolverPP, DPMSolverPP2S, DPMSolverPPSDE
from diffusion_jax.samplers.heun import Euler, Heun
from diffusion_jax.samplers.learned_pc import LearnedPC
from diffusion_jax.samplers.ode import AdaptiveODE, ODESolver
from diffusion_jax.samplers.plms import PLMS
from diffusion_jax.samplers.restart import Restart
from diffusion_jax.samplers.sde import (AnnealedLangevin, EulerMaruyama, PredictorCorrector,
                                        ReverseDiffusion)
from diffusion_jax.samplers.unipc import UniPC

SAMPLERS = {
    # deterministic (probability-flow ODE) solvers
    "ddim": DDIM,
    "euler": Euler,
    "heun": Heun,
    "plms": PLMS,
    "ipndm": PLMS,  # iPNDM: PLMS's Adams-Bashforth with lower-order warm-up (what PLMS is here)
    "ipndm_v": partial(DEIS, order=4),  # variable-step iPNDM = rhoAB-DEIS of order 4
    "deis": partial(DEIS, order=3),
    "deis_tab1": partial(DEIS, order=1, variable="t"),
    "deis_tab2": partial(DEIS, order=2, variable="t"),
    "deis_tab3": partial(DEIS, order=3, variable="t"),
    "ode_euler": partial(ODESolver, method="euler"),
    "ode_heun": partial(ODESolver, method="heun"),
    "ode_rk4": partial(ODESolver, method="rk4"),
    "ode_dopri5": AdaptiveODE,
    "dpm_solver_1": partial(DPMSolver, order=1),
    "dpm_solver_2": partial(DPMSolver, order=2),
    "dpm_solver_3": partial(DPMSolver, order=3),
    "dpmpp_2s": DPMSolverPP2S,
    "dpmpp_2m": partial(DPMSolverPP, order=2),
    "dpmpp_3m": partial(DPMSolverPP, order=3),
    "unipc": partial(UniPC, order=3),
    "unipc_2": partial(UniPC, order=2),
    "unipc_bh1": partial(UniPC, order=3, variant="bh1"),
    # zero coefficients: a UniPC-2-like predictor-corrector with exact phi-weights; its learned
    # coefficients and grid come from optimize_solver (optimize-grid --sampler learned_pc)
    "learned_pc": LearnedPC,
    # stochastic (reverse-SDE) samplers
    "ddpm": DDPM,
    "dpmpp_sde_2m": DPMSolverPPSDE,
    "euler_maruyama": EulerMaruyama,
    "reverse_diffusion": ReverseDiffusion,
    "pc": PredictorCorrector,
    "ald": AnnealedLangevin,
    "restart": Restart,
}
