"""Time grids: ``num_steps + 1`` decreasing times from ``t_max`` to ``t_min`` of a process.

The final step (one rule for every sampler): a sampler takes ``num_steps`` steps along the grid
and lands on ``t_min``; the driver then calls the denoiser once more there (counted in the NFE)
and steps to the data end, ``sigma = 0`` (``base.final_step``: an ODE step in
``(sigma/alpha)^2`` by default, or EDM's/DDIM's jump to ``x0_hat``), written once in the driver
instead of in every sampler.
"""

from __future__ import annotations

import jax
import numpy as np

from diffusion_jax.processes import DiscreteVP, Process

GRIDS = ("uniform", "logsnr", "quadratic", "karras", "leading", "trailing")

# The grid a sampler gets when none is named (``grid="default"``). Measured twice: on the
# exact-score mixtures of ``bench-samplers`` (VP-linear; scripts/bench_default_grids.py) the
# quadratic grid was best for most ODE solvers at 5-10 NFE (UniPC 1.50 against logsnr 1.62, in
# geometric-mean RMSE relative to the best), but on the trained Fashion-MNIST demo model
# (VP-cosine) it was far worse at every NFE (UniPC FD 307 against 169 at NFE 5, 182 against 116
# at NFE 8; README, "Default grids"). A default must hold on the models people train, so every
# sampler keeps logsnr until a choice wins on both; learned grids (``optimize_grid``) adapt to
# the model instead (UniPC at NFE 5: FD 114).
DEFAULT_GRIDS: dict[str, str] = {}


def default_grid(sampler) -> str:
    """``DEFAULT_GRIDS[name]`` for a sampler name, ``"logsnr"`` otherwise (sampler objects too)."""
    return DEFAULT_GRIDS.get(sampler, "logsnr") if isinstance(sampler, str) else "logsnr"


def make_grid(process: Process, num_steps: int, kind: str = "logsnr", rho: float = 7.0,
              t_max: float | None = None, t_min: float | None = None) -> np.ndarray:
    """Times ``[t_0 = t_max, ..., t_N = t_min]`` (float64 numpy, length ``num_steps + 1``).

    * ``uniform``: equal steps in ``t``;
    * ``logsnr``: equal steps in ``logsnr`` (DPM-Solver's ``logSNR`` spacing);
    * ``quadratic``: equal steps in ``sqrt(t)`` (DPM-Solver's ``time_quadratic``);
    * ``karras``: equal steps in ``s^(1/rho)`` with ``s = sigma/alpha`` (Karras et al. eq. 5);
    * ``leading`` / ``trailing``: the integer-timestep spacings of DDIM/diffusers for a
      ``DiscreteVP`` (Lin et al. 2024, Table 2), mapped to ``t = (n + 1) / N``.

    Grids are computed on the host: they are data, not traced values, so a grid never causes
    a recompile by changing and is exact in float64.
    """
    if kind not in GRIDS:
        raise ValueError(f"unknown grid {kind!r}; valid grids: {', '.join(GRIDS)}")
    with jax.ensure_compile_time_eval():  # a grid is host data even when sample() is traced
        return _make_grid(process, num_steps, kind, rho, t_max, t_min)


def _make_grid(process, num_steps, kind, rho, t_max, t_min):
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    hi = process.t_max if t_max is None else float(t_max)
    lo = process.t_min if t_min is None else float(t_min)
    process.check_t(hi, "t_max")
    process.check_t(lo, "t_min")
    if not lo < hi:
        raise ValueError(f"the grid needs t_min < t_max, got t_min={lo}, t_max={hi}")
    u = np.linspace(0.0, 1.0, num_steps + 1)
    if kind == "uniform":
        ts = hi + u * (lo - hi)
    elif kind == "quadratic":
        ts = (np.sqrt(hi) + u * (np.sqrt(lo) - np.sqrt(hi))) ** 2
    elif kind in ("logsnr", "karras"):
        l_hi, l_lo = (float(process.logsnr(np.float64(v))) for v in (hi, lo))
        if kind == "logsnr":
            lam = l_hi + u * (l_lo - l_hi)
        else:
            s_hi, s_lo = np.exp(-0.5 * l_hi), np.exp(-0.5 * l_lo)
            s = (s_hi ** (1 / rho) + u * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
            lam = -2.0 * np.log(s)
        ts = np.asarray(process.t_of_logsnr(lam), dtype=np.float64)
    else:
        ts = _discrete_grid(process, num_steps, kind)
    ts = np.array(ts, dtype=np.float64)
    ts[0], ts[-1] = (ts[0], ts[-1]) if kind in ("leading", "trailing") else (hi, lo)
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"grid {kind!r} with {num_steps} steps is not strictly decreasing: {ts}")
    return ts


def _discrete_grid(process: Process, num_steps: int, kind: str) -> np.ndarray:
    if not isinstance(process, DiscreteVP):
        raise ValueError(f"grid {kind!r} is for DiscreteVP processes, got {type(process).__name__}")
    n = process.num_timesteps
    if num_steps >= n:
        raise ValueError(f"grid {kind!r} needs num_steps < num_timesteps={n}, got {num_steps}")
    if kind == "leading":
        # DDIM: every (N // S)-th timestep from 0, visited in reverse; plus timestep 0 at the end.
        k = np.arange(0, num_steps + 1) * (n // (num_steps + 1))
    else:
        # Trailing: start from the last timestep N-1 (so t_max is reached); end at timestep 0.
        k = np.round(np.linspace(n - 1, 0, num_steps + 1))[::-1]
    return (np.unique(k)[::-1] + 1.0) / n
