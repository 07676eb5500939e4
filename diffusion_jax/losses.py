"""Denoising losses: one function for every process, parameterization, weighting and t-sampler.

``loss = E_t E_eps [ w(t) |out - target|^2 ]`` where ``out`` is the network output and ``target``
the parameterization's regression target. Weightings, in ``x0``-space terms:

* ``"simple"``: unit weight in the network's output space (DDPM's L_simple for eps-prediction);
* ``"edm"``: EDM's ``lambda(sigma) = 1/c_out^2`` in x0-space (= unit weight on ``F`` with EDM
  preconditioning; Karras et al. 2022, eq. 8);
* ``"eps"``: the squared error of the implied noise, ``(alpha/sigma)^2`` in x0-space (DDPM's
  L_simple whatever the network predicts: fine-tuning an epsilon model through its x0 output);
* ``"likelihood"``: ``g(t)^2 / sigma^2`` weighting of the score error (Song et al. 2021c; the
  score-matching bound on the negative log-likelihood).

t-samplers: ``uniform`` in ``[t_min, t_max]``, ``antithetic`` (stratified: one uniform offset per
batch, Kingma et al. 2021 "low-discrepancy"), ``lognormal`` (EDM's ``ln sigma ~ N(P_mean, P_std)``
of ``s = sigma/alpha``, mapped to ``t`` by the process's inverse logsnr), ``logit_normal``
(SD3's: ``logit(u) ~ N(p_mean, p_std)``, ``t = t_min + u (t_max - t_min)``; with
``p_mean=0, p_std=1`` on the ``flow`` process, Esser et al. 2024's choice).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp

from diffusion_jax.parameterization import EDMPrecond, Parameterization
from diffusion_jax.processes import Process, _bcast

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LossConfig:
    weighting: Literal["simple", "edm", "eps", "likelihood"] = "simple"
    t_sampler: Literal["uniform", "antithetic", "lognormal", "logit_normal"] = "uniform"
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5  # EDM weighting for non-EDM parameterizations

    def __post_init__(self):
        if self.weighting not in ("simple", "edm", "eps", "likelihood"):
            raise ValueError(f"unknown weighting {self.weighting!r}; valid: simple, edm, eps, "
                             "likelihood")
        if self.t_sampler not in ("uniform", "antithetic", "lognormal", "logit_normal"):
            raise ValueError(f"unknown t_sampler {self.t_sampler!r}; valid: uniform, antithetic, "
                             "lognormal, logit_normal")


def sample_t(key: Array, n: int, process: Process, kind: str, p_mean=-1.2, p_std=1.2) -> Array:
    lo, hi = process.t_min, process.t_max
    if kind == "uniform":
        u = jax.random.uniform(key, (n,))
    elif kind == "antithetic":
        u = (jax.random.uniform(key, ()) + jnp.arange(n) / n) % 1.0
    elif kind == "logit_normal":  # SD3 (Esser et al. 2024): logit(u) ~ N(p_mean, p_std)
        u = jax.nn.sigmoid(p_mean + p_std * jax.random.normal(key, (n,)))
    else:
        log_s = p_mean + p_std * jax.random.normal(key, (n,))
        t = process.t_of_logsnr(-2.0 * log_s)
        return jnp.clip(t, lo, hi)
    return lo + (hi - lo) * u


def weight(cfg: LossConfig, process: Process, parameterization: Parameterization, t) -> Array:
    """Per-example weight on the output-space squared error."""
    a, s = process.alpha(t), process.sigma(t)
    if cfg.weighting == "simple":
        return jnp.ones_like(t)
    x0_scale = parameterization.loss_scale(a, s)  # output error -> x0 error
    if cfg.weighting == "edm":
        if isinstance(parameterization, EDMPrecond):
            return jnp.ones_like(t)  # lambda(sigma) c_out^2 = 1
        sd2, s2 = cfg.sigma_data**2, (s / a) ** 2
        return x0_scale * (s2 + sd2) / (s2 * sd2)
    if cfg.weighting == "eps":
        return x0_scale * (a / s) ** 2
    # likelihood: g^2 |score - score_hat|^2 = g^2 alpha^2 / sigma^4 |x0 - x0_hat|^2
    return x0_scale * process.g2(t) * a**2 / s**4


def denoising_loss(apply_fn: Callable, params, x0: Array, key: Array, process: Process,
                   parameterization: Parameterization, cfg: LossConfig, cond=None,
                   train: bool = True, eps: Array | None = None) -> tuple[Array, dict]:
    """Mean weighted denoising loss over the batch ``x0 [B, ...]``.

    ``apply_fn(params, net_x, net_t, cond, train, rngs) -> out`` (``cond``: the conditioning
    kwargs, see ``diffusion_jax.conditioning``); ``eps``: the noise paired with each ``x0``
    (reflow's couplings; default: drawn independently). Returns ``(loss, aux)`` with the
    per-example losses and times in ``aux`` (for diagnostics).
    """
    k_t, k_eps, k_drop = jax.random.split(key, 3)
    t = sample_t(k_t, x0.shape[0], process, cfg.t_sampler, cfg.p_mean, cfg.p_std)
    if eps is None:
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    a, s = _bcast(process.alpha(t), x0), _bcast(process.sigma(t), x0)
    x_t = process.marginal(x0, t, eps)
    net_x, net_t = parameterization.inputs(x_t, t, a, s)
    out = apply_fn(params, net_x, jnp.reshape(net_t, t.shape), cond, train, {"dropout": k_drop})
    target = parameterization.target(x0, eps, a, s, t)
    per_ex = jnp.mean(jnp.reshape((out - target) ** 2, (x0.shape[0], -1)), axis=1)
    w = weight(cfg, process, parameterization, t)
    losses = w * per_ex
    return jnp.mean(losses), {"t": t, "per_example": losses}
