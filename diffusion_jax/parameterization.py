"""What a network predicts, and how that becomes a denoiser ``x0_hat``.

A ``Parameterization`` converts between the network's raw output and ``x0_hat`` for any process,
given ``alpha = alpha(t)`` and ``sigma = sigma(t)`` (broadcastable to ``x_t``):

* ``inputs(x_t, t, alpha, sigma) -> (net_x, net_t)``: what the network is fed (EDM scales the
  input by ``c_in`` and conditions on ``c_noise``; the others feed ``x_t`` and ``t``);
* ``to_x0(out, x_t, alpha, sigma, t)``: the network output as ``x0_hat``;
* ``target(x0, eps, alpha, sigma, t)``: the regression target for training, so that a perfect
  network gives ``to_x0(target) == x0``;
* ``loss_scale(alpha, sigma)``: the factor that turns an output-space squared error into an
  ``x0``-space one (``|x0_hat - x0|^2 = loss_scale * |out - target|^2``); losses use it to move
  between weightings.

Denoisers, samplers and guidance only ever see ``x0_hat``; ``eps_hat`` and the score follow from
``x_t = alpha x0 + sigma eps``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax.processes import Process, _bcast

Array = jax.Array
Denoiser = Callable[..., Array]  # denoise(x_t [B,...], t [] or [B]) -> x0_hat [B,...], float32


def eps_from_x0(x_t, x0, alpha, sigma):
    return (x_t - alpha * x0) * (1.0 / sigma)  # a reciprocal: sigma is usually a scalar


def x0_from_eps(x_t, eps, alpha, sigma):
    return (x_t - sigma * eps) / alpha


def score_from_x0(x_t, x0, alpha, sigma):
    """``grad log p_t(x_t) = (alpha x0_hat - x_t) / sigma^2`` (Tweedie)."""
    return (alpha * x0 - x_t) / sigma**2


class Parameterization:
    def inputs(self, x_t, t, alpha, sigma):
        return x_t, t

    def to_x0(self, out, x_t, alpha, sigma, t=None):
        raise NotImplementedError

    def target(self, x0, eps, alpha, sigma, t=None):
        raise NotImplementedError

    def loss_scale(self, alpha, sigma):
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class EpsPrediction(Parameterization):
    """The network predicts the noise ``eps`` (Ho et al. 2020)."""

    def to_x0(self, out, x_t, alpha, sigma, t=None):
        return x0_from_eps(x_t, out, alpha, sigma)

    def target(self, x0, eps, alpha, sigma, t=None):
        return eps

    def loss_scale(self, alpha, sigma):
        return (sigma / alpha) ** 2


@dataclasses.dataclass(frozen=True)
class X0Prediction(Parameterization):
    """The network predicts ``x0`` directly."""

    def to_x0(self, out, x_t, alpha, sigma, t=None):
        return out

    def target(self, x0, eps, alpha, sigma, t=None):
        return x0

    def loss_scale(self, alpha, sigma):
        return jnp.ones_like(alpha)


@dataclasses.dataclass(frozen=True)
class VPrediction(Parameterization):
    """``v = (alpha eps - sigma x0) / sqrt(alpha^2 + sigma^2)`` (Salimans & Ho 2022; normalised
    so that it is the usual ``v`` on VP processes and stays unit-scale on others)."""

    def to_x0(self, out, x_t, alpha, sigma, t=None):
        r2 = alpha**2 + sigma**2
        return (alpha * x_t - sigma * jnp.sqrt(r2) * out) / r2

    def target(self, x0, eps, alpha, sigma, t=None):
        return (alpha * eps - sigma * x0) / jnp.sqrt(alpha**2 + sigma**2)

    def loss_scale(self, alpha, sigma):
        return sigma**2 / (alpha**2 + sigma**2)


@dataclasses.dataclass(frozen=True)
class ScorePrediction(Parameterization):
    """The network predicts ``sigma * score = -eps`` (NCSN's noise-conditional score, scaled so
    that the output has unit variance; Song & Ermon 2019)."""

    def to_x0(self, out, x_t, alpha, sigma, t=None):
        return x0_from_eps(x_t, -out, alpha, sigma)

    def target(self, x0, eps, alpha, sigma, t=None):
        return -eps

    def loss_scale(self, alpha, sigma):
        return (sigma / alpha) ** 2


@dataclasses.dataclass(frozen=True)
class EDMPrecond(Parameterization):
    """EDM preconditioning (Karras et al. 2022, Table 1), generalised to any process through the
    scaled variables ``x_t / alpha`` and ``sigma_t / alpha`` (Karras et al., Sec. 4):

    ``x0_hat = c_skip x~ + c_out F(c_in x~, c_noise)``, ``x~ = x_t / alpha``, ``s = sigma / alpha``,
    ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s sd / sqrt(s^2+sd^2)``, ``c_in = 1/sqrt(s^2+sd^2)``,
    ``c_noise = log(s)/4``.
    """

    sigma_data: float = 0.5

    def scalings(self, alpha, sigma) -> "EDMScalings":
        """The named coefficients at ``(alpha, sigma)``."""
        s = sigma / alpha
        sd2 = self.sigma_data**2
        r = jnp.sqrt(s**2 + sd2)
        return EDMScalings(s=s, c_skip=sd2 / (s**2 + sd2), c_out=s * self.sigma_data / r,
                           c_in=1.0 / r, c_noise=0.25 * jnp.log(s))

    def inputs(self, x_t, t, alpha, sigma):
        c = self.scalings(alpha, sigma)
        return c.c_in * x_t / alpha, c.c_noise

    def to_x0(self, out, x_t, alpha, sigma, t=None):
        c = self.scalings(alpha, sigma)
        return c.c_skip * x_t / alpha + c.c_out * out

    def target(self, x0, eps, alpha, sigma, t=None):
        c = self.scalings(alpha, sigma)
        x_tilde = x0 + c.s * eps
        return (x0 - c.c_skip * x_tilde) / c.c_out

    def loss_scale(self, alpha, sigma):
        return self.scalings(alpha, sigma).c_out ** 2


@dataclasses.dataclass(frozen=True)
class VelocityPrediction(Parameterization):
    """Flow matching / rectified flow (Lipman et al. 2022; Liu et al. 2022): on the linear
    interpolant ``x_t = (1 - t) x0 + t eps`` the network predicts the velocity
    ``dx_t/dt = eps - x0``; ``x0 = x_t - t v``. Needs ``alpha + sigma = 1`` (the ``flow``
    process)."""

    def to_x0(self, out, x_t, alpha, sigma, t=None):
        return x_t - sigma * out

    def target(self, x0, eps, alpha, sigma, t=None):
        return eps - x0

    def loss_scale(self, alpha, sigma):
        return sigma**2


class EDMScalings(NamedTuple):
    """EDM's coefficients by name (``s = sigma / alpha``, the VE-equivalent noise level)."""
    s: jax.Array
    c_skip: jax.Array
    c_out: jax.Array
    c_in: jax.Array
    c_noise: jax.Array


PARAMETERIZATIONS = {
    "eps": EpsPrediction,
    "x0": X0Prediction,
    "v": VPrediction,
    "score": ScorePrediction,
    "edm": EDMPrecond,
    "velocity": VelocityPrediction,
}


def make_parameterization(name: str, **kwargs) -> Parameterization:
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {name!r}; valid: {sorted(PARAMETERIZATIONS)}")
    return PARAMETERIZATIONS[name](**kwargs)


def make_denoiser(
    apply_fn: Callable[..., Array],
    process: Process,
    parameterization: Parameterization,
) -> Denoiser:
    """Wrap a network ``apply_fn(net_x, net_t, *args, **kw) -> out`` as ``denoise(x_t, t, ...)``.

    ``t`` may be a scalar (one time for the batch, as samplers call it) or shape [B]. The network
    always receives ``net_t`` of shape [B]. Output is float32 whatever the compute dtype.
    """

    def denoise(x_t, t, *args, **kwargs):
        t = jnp.broadcast_to(jnp.asarray(t, x_t.dtype), x_t.shape[:1])
        alpha = _bcast(process.alpha(t), x_t)
        sigma = _bcast(process.sigma(t), x_t)
        net_x, net_t = parameterization.inputs(x_t, t, alpha, sigma)
        net_t = jnp.reshape(net_t, x_t.shape[:1])  # [B, 1, ...] per-example scalars -> [B]
        out = apply_fn(net_x, net_t, *args, **kwargs).astype(x_t.dtype)
        return parameterization.to_x0(out, x_t, alpha, sigma, t)

    return denoise
