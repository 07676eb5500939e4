"""Log-likelihood through the probability-flow ODE (Song et al. 2021b, App. D.2; Chen et al. 2018).

``d/dt log p_t(x_t) = -div v(x_t, t)`` along the PF-ODE ``dx/dt = v``, so
``log p_{t_min}(x) = log p_prior(x_{t_max}) + int_{t_min}^{t_max} div v dt``: one adaptive
Dormand-Prince solve of the augmented state ``(x, delta_logp)`` on device.

The divergence is exact (``D`` Jacobian-vector products; small ``D`` only) or Hutchinson's
estimate ``E[z^T J z]`` with Rademacher or Gaussian ``z`` drawn once per solve.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp

from diffusion_jax.processes import Process
from diffusion_jax.samplers.base import Context, pf_ode_drift
from diffusion_jax.samplers.ode import dopri5

Array = jax.Array


def _sum_rest(v):
    return jnp.sum(jnp.reshape(v, (v.shape[0], -1)), axis=1)


def log_likelihood(denoise: Callable, process: Process, x: Array, *, key: Array | None = None,
                   trace: Literal["exact", "rademacher", "gaussian"] = "rademacher",
                   rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 10_000,
                   prior_logp: Callable | None = None):
    """``log p_{t_min}(x)`` per example, in nats, shape ``[B]``; and solver stats.

    ``x``: ``[B, ...]`` data (treated as the state at ``t_min``). ``denoise(x, t) -> x0_hat``
    must act on each example independently (the divergence is per example). ``prior_logp``
    defaults to ``process.prior_logp``, the ``N(0, sigma(t_max)^2)`` approximation of
    ``p_{t_max}``; its error is ``O(alpha(t_max) |x0|)`` per dimension.
    """
    if trace not in ("exact", "rademacher", "gaussian"):
        raise ValueError(f"trace must be 'exact', 'rademacher' or 'gaussian', got {trace!r}")
    ctx = Context(denoise, process, 0)
    drift = lambda xx, t: pf_ode_drift(ctx, xx, t)
    d = math.prod(x.shape[1:])
    if trace == "exact":
        basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])

        def div(xx, t):
            v, jvps = jax.vmap(lambda e: jax.jvp(lambda y: drift(y, t), (xx,),
                                                 (jnp.broadcast_to(e, xx.shape),)))(basis)
            diag = jnp.sum(jnp.reshape(jvps, (d, xx.shape[0], d)) * jnp.reshape(
                basis, (d, 1, d)), axis=(0, 2))
            return v[0], diag
    else:
        key = jax.random.key(0) if key is None else key
        z = (jax.random.rademacher(key, x.shape, x.dtype) if trace == "rademacher"
             else jax.random.normal(key, x.shape, x.dtype))

        def div(xx, t):
            v, jz = jax.jvp(lambda y: drift(y, t), (xx,), (z,))
            return v, _sum_rest(jz * z)

    def fn(t, state):
        xx, _ = state
        return div(xx, t)

    zeros = jnp.zeros(x.shape[:1], x.dtype)
    (x_T, delta), stats = dopri5(fn, (x, zeros), process.t_min, process.t_max, rtol, atol,
                                 max_steps)
    prior_logp = process.prior_logp if prior_logp is None else prior_logp
    return prior_logp(x_T) + delta, stats


def bits_per_dim(logp: Array, dim: int, num_bins: int = 256, data_range: float = 2.0) -> Array:
    """Bits per dimension of dequantised discrete data from ``log p(x)`` of its continuous
    rescaling: ``x = (y + u) * data_range / num_bins + const`` with ``y`` in ``{0..num_bins-1}``
    and ``u ~ U[0, 1)``, so ``bpd = -log p(x) / (D ln 2) + log2(num_bins / data_range)``."""
    return -logp / (dim * math.log(2.0)) + math.log2(num_bins / data_range)


def dequantize(key: Array, y: Array, num_bins: int = 256, lo: float = -1.0,
               hi: float = 1.0) -> Array:
    """Uniform dequantisation of integers ``y`` in ``[0, num_bins)`` onto ``[lo, hi)``."""
    u = jax.random.uniform(key, y.shape)
    return lo + (y.astype(jnp.float32) + u) * (hi - lo) / num_bins


def to_integers(x: Array) -> Array:
    """Images in [-1, 1] (``u8 / 127.5 - 1``) back to their integers ``0..255``."""
    return jnp.round((x + 1.0) * 127.5).astype(jnp.int32)


NUM_BINS = 256


def discretized_logistic_logp(x, mean, log_scale, num_bins: int = NUM_BINS):
    """``log P(x)`` per pixel of data ``x`` on the grid ``{-1, -1 + 2/(bins-1), ..., 1}`` under a
    logistic(mean, exp(log_scale)) discretised to the bins (the end bins take the tails), so the
    probabilities of the ``bins`` values sum to 1."""
    half = 1.0 / (num_bins - 1)
    centered = x - mean
    inv_s = jnp.exp(-log_scale)
    plus, minus = inv_s * (centered + half), inv_s * (centered - half)
    log_cdf_plus = plus - jax.nn.softplus(plus)            # log sigmoid(plus): the bottom bin
    log_one_minus_cdf_min = -jax.nn.softplus(minus)        # log(1 - sigmoid(minus)): the top bin
    delta = jax.nn.sigmoid(plus) - jax.nn.sigmoid(minus)
    mid = inv_s * centered                                 # density x bin width when delta is tiny
    log_pdf_mid = mid - log_scale - 2.0 * jax.nn.softplus(mid) + math.log(2 * half)
    inner = jnp.where(delta > 1e-5, jnp.log(jnp.maximum(delta, 1e-12)), log_pdf_mid)
    return jnp.where(x < -1 + half, log_cdf_plus,
                     jnp.where(x > 1 - half, log_one_minus_cdf_min, inner))


def logistic_mixture_logp(x, logits, means, log_scales, num_bins: int = NUM_BINS):
    """``log P(x)`` per pixel of 8-bit data ``x [..., 1]`` (in [-1, 1]) under a mixture of
    discretized logistics with parameters ``[..., K]`` each (PixelCNN++'s likelihood): a
    distribution over the ``num_bins`` values."""
    lp = discretized_logistic_logp(x, means, log_scales, num_bins)
    return jax.scipy.special.logsumexp(jax.nn.log_softmax(logits, -1) + lp, axis=-1)
