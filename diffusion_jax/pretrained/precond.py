"""A pretrained network as a denoiser in a process's time: what its authors feed it and how its
output becomes ``x0_hat``, written once per convention.

``PretrainedDenoiser(net, precond, info)`` is a flax module ``(x_t, t, y=None) -> x0_hat``: the
``model`` of a ``Diffusion`` method with the ``x0`` parameterization, so every sampler, guidance
wrapper, learned grid and likelihood of the library runs on it unchanged.

* ``DiscreteSchedule`` (diffusers' DDPM/DDIM/PNDM... schedulers): step ``n`` at ``t = (n+1)/N``
  of a ``DiscreteVP``; the network sees ``n = N t - 1`` and predicts epsilon, v or the sample;
  ``clip_sample`` clips ``x0_hat`` as diffusers' DDPM/DDIM steps do.
* ``Consistency`` (diffusers' ``CMStochasticIterativeScheduler``): the EDM process; input
  ``x / sqrt(s^2 + sd^2)``, noise label ``250 log s``, the consistency boundary scalings.
* ``EDMPreconds`` (NVlabs/edm ``EDMPrecond``, ``VPPrecond``, ``VEPrecond``, ``iDDPMPrecond``):
  each with its own ``c_skip``, ``c_out``, ``c_in``, ``c_noise``, in the matching process's time.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.processes import EDM, VE, VP, DiscreteVP, Process, _bcast, iddpm_sigmas


@dataclasses.dataclass(frozen=True)
class NetInfo:
    """What callers ask of the network: ``num_classes`` (0: unconditional) and whether label
    ``num_classes`` is a null class (classifier-free guidance needs one)."""
    num_classes: int = 0
    null_class: bool = False


@dataclasses.dataclass(frozen=True)
class DiscreteSchedule:
    process: DiscreteVP
    prediction_type: str = "epsilon"    # epsilon | v_prediction | sample
    clip_sample: float | None = None    # clip x0_hat to [-c, c] (diffusers' clip_sample_range)

    def __call__(self, net, x, t, y):
        a, s = _bcast(self.process.alpha(t), x), _bcast(self.process.sigma(t), x)
        n = jnp.asarray(t, jnp.float32) * self.process.num_timesteps - 1.0
        out = net(x, n, y)
        if self.prediction_type == "epsilon":
            x0 = (x - s * out) / a
        elif self.prediction_type == "v_prediction":
            x0 = a * x - s * out
        else:
            x0 = out
        return x0 if self.clip_sample is None else jnp.clip(x0, -self.clip_sample, self.clip_sample)


@dataclasses.dataclass(frozen=True)
class Consistency:
    process: EDM
    sigma_data: float = 0.5
    sigma_min: float = 0.002

    def __call__(self, net, x, t, y):
        s = _bcast(jnp.asarray(t, jnp.float32), x)
        sd2 = self.sigma_data ** 2
        out = net(x / jnp.sqrt(s ** 2 + sd2), 250.0 * jnp.log(jnp.asarray(t, jnp.float32) + 1e-44), y)
        c_skip = sd2 / ((s - self.sigma_min) ** 2 + sd2)
        c_out = (s - self.sigma_min) * self.sigma_data / jnp.sqrt(s ** 2 + sd2)
        return c_skip * x + c_out * out


@dataclasses.dataclass(frozen=True)
class EDMPreconds:
    """NVlabs/edm's preconditioners. ``kind``: edm (t = sigma), vp (VP time), ve (VE time),
    iddpm (a ``DiscreteVP``-shaped table of iDDPM's noise levels; the label is the nearest
    level's index). ``x_t = alpha x0 + sigma eps`` in every case: EDM's ``x = x_t / alpha``."""
    kind: str
    process: Process
    sigma_data: float = 0.5
    m: int = 1000
    img_channels: int = 3
    c1: float = 0.001
    c2: float = 0.008

    def __call__(self, net, x, t, y):
        a, sig = _bcast(self.process.alpha(t), x), _bcast(self.process.sigma(t), x)
        s = sig / a                     # EDM's sigma
        x_edm = x / a
        tt = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), x.shape[:1])
        if self.kind == "edm":
            sd2 = self.sigma_data ** 2
            f = net(x_edm / jnp.sqrt(s ** 2 + sd2), jnp.log(s.reshape(-1)) / 4, y)
            return sd2 / (s ** 2 + sd2) * x_edm + s * self.sigma_data / jnp.sqrt(s ** 2 + sd2) * f
        if self.kind == "ve":
            return x_edm + s * net(x_edm, jnp.log(0.5 * s.reshape(-1)), y)
        if self.kind == "vp":
            return x_edm - s * net(x_edm / jnp.sqrt(s ** 2 + 1), (self.m - 1) * tt, y)
        u = jnp.asarray(iddpm_sigmas(self.m, self.c1, self.c2), jnp.float32)
        index = jnp.argmin(jnp.abs(s.reshape(-1)[:, None] - u[None]), axis=1)
        f = net(x_edm / jnp.sqrt(s ** 2 + 1), (self.m - 1 - index).astype(jnp.float32), y)
        return x_edm - s * f[..., :self.img_channels]


class PretrainedDenoiser(nn.Module):
    """``(x_t [B,H,W,C], t [] or [B], y [B] | None, context [B,L,D] | None) -> x0_hat``: a
    network under its preconditioning; parameters under ``net``. A text-conditioned network
    takes ``context`` where others take labels; output channels beyond the input's (a learned
    variance, as DiT's) are dropped."""
    net: nn.Module
    precond: object
    config: NetInfo = NetInfo()

    def __call__(self, x, t, y=None, train: bool = False, context=None, low_res=None):
        # ``low_res``: the signature of the library's own networks (never set: no folder
        # format here carries a super-resolution model)
        c = x.shape[-1]
        cond = y if context is None else context
        return self.precond(
            lambda xin, noise, labels: self.net(xin, noise, cond, train=train)[..., :c],
            x.astype(jnp.float32), t, y)


def vp_for_edm(beta_min: float = 0.1, beta_d: float = 19.9) -> VP:
    """EDM's VP: ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` in EDM's variables,
    which is ``VP.linear(beta_min, beta_min + beta_d)`` in scaled ones."""
    return VP.linear(beta_min=beta_min, beta_max=beta_min + beta_d)


def ve_for_edm(sigma_min: float = 0.02, sigma_max: float = 100.0) -> VE:
    return VE(sigma_min=sigma_min, sigma_max=sigma_max)
