"""The VAE as a method: the negative ELBO with a per-pixel discretized logistic likelihood of the
8-bit image (the probability of each of the 256 values, so bits/dim need no dequantisation
offset), a KL weight ``beta`` with linear warm-up, and the two likelihood bounds: the ELBO and
the importance-weighted bound with ``k`` samples (Burda et al. 2016), both in bits/dim.

    method = VAEMethod(VAE(28, 1), tx, shape=(28, 28, 1), beta=1.0, kl_warmup=1000)

Samples are the decoder's mean image at ``z ~ N(0, I)`` (the per-pixel logistic noise is left
out, as is customary when showing VAE samples).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax.methods.state import SingleNetwork, TrainState, apply_gradients, ema_decay_at
from diffusion_jax.models.vae import VAE

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


def gaussian_kl(mu, logvar):
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over all but the batch axis."""
    kl = 0.5 * (mu ** 2 + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)


def _sum(v):
    return jnp.sum(v.reshape(v.shape[0], -1), axis=-1)


def log_normal(z, mu, logvar):
    return _sum(-0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 * jnp.exp(-logvar)))


@dataclasses.dataclass(frozen=True, eq=False)
class VAEMethod(SingleNetwork):
    """``beta``: the KL weight (small for an autoencoder); ``kl_warmup``: steps over which the
    weight rises linearly from 0; ``iw_samples``: k of the importance-weighted bound."""
    model: VAE
    tx: optax.GradientTransformation
    shape: tuple[int, ...]
    beta: float = 1.0
    kl_warmup: int = 0
    iw_samples: int = 64
    ema_decay: float = 0.999
    ema_start: int = 0
    name: str = "vae"
    generates = True

    def example_inputs(self) -> tuple:
        return jnp.zeros((1,) + self.shape), jnp.zeros((1,) + self.model.latent_shape)

    def _apply(self, params, x, eps):
        return self.model.apply({"params": params}, x, eps)

    def train_step(self, state: TrainState, batch: dict, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        x = batch["image"]
        eps = jax.random.normal(key, (x.shape[0],) + self.model.latent_shape)
        warm = (jnp.minimum(1.0, (state.step + 1) / self.kl_warmup) if self.kl_warmup
                else jnp.ones(()))
        dims = math.prod(self.shape) * math.log(2.0)

        def loss_fn(params):
            (mean, log_scale), mu, logvar = self._apply(params, x, eps)
            rec = _sum(discretized_logistic_logp(x, mean, log_scale))
            kl = gaussian_kl(mu, logvar)
            loss = jnp.mean(-rec + self.beta * warm * kl) / dims
            return loss, (jnp.mean(-rec + kl) / dims, jnp.mean(kl) / dims)

        (loss, (elbo_bpd, kl_bpd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        params, opt_state, ema = apply_gradients(
            self.tx, state.params, state.opt_state, grads, state.ema_params,
            ema_decay_at(state.step, self.ema_decay, self.ema_start))
        metrics = {"loss": loss, "elbo_bpd": elbo_bpd, "kl_bpd": kl_bpd, "kl_weight": self.beta * warm,
                   "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    # -- bounds ------------------------------------------------------------------------------
    def bits_per_dim(self, params, x, key, k: int | None = None) -> dict:
        """Per-image ``{"elbo": ..., "iwae": ...}`` bits/dim of 8-bit images ``x`` (in [-1, 1]):
        upper bounds on the true negative log-likelihood, the IWAE one with ``k`` samples
        (``iw_samples``) the tighter."""
        return _bounds(self, k or self.iw_samples)(params, x, key)

    # -- sampling ----------------------------------------------------------------------------
    def decode(self, params, z):
        return _decode(self.model)(params, z)

    def encode(self, params, x):
        """The posterior mean of ``x``."""
        return _encode(self.model)(params, x)

    def sample(self, params, key, n: int, temperature: float = 1.0):
        z = temperature * jax.random.normal(key, (n,) + self.model.latent_shape)
        return self.decode(params, z)

    def preview(self, params, key, n: int, test_images):
        return np.asarray(self.sample(params, key, n)), None

    def evaluate(self, params, test_source) -> dict:
        return {}


@functools.lru_cache(maxsize=8)
def _decode(model: VAE):
    return jax.jit(lambda p, z: model.apply({"params": p}, z, method=VAE.decode)[0])


@functools.lru_cache(maxsize=8)
def _encode(model: VAE):
    return jax.jit(lambda p, x: model.apply({"params": p}, x, method=VAE.encode)[0])


@functools.lru_cache(maxsize=8)
def _bounds(method: VAEMethod, k: int):
    model, dims = method.model, math.prod(method.shape) * math.log(2.0)

    def one(params, x, eps):  # log p(x, z) - log q(z | x) for one draw per image
        (mean, log_scale), mu, logvar = model.apply({"params": params}, x, eps)
        z = mu + jnp.exp(0.5 * logvar) * eps
        log_px = _sum(discretized_logistic_logp(x, mean, log_scale))
        log_pz = log_normal(z, jnp.zeros_like(z), jnp.zeros_like(z))
        return log_px + log_pz - log_normal(z, mu, logvar), log_px - gaussian_kl(mu, logvar)

    @jax.jit
    def fn(params, x, key):
        eps = jax.random.normal(key, (k, x.shape[0]) + model.latent_shape)
        log_w, elbo = jax.lax.map(lambda e: one(params, x, e), eps)
        iwae = jax.scipy.special.logsumexp(log_w, axis=0) - math.log(k)
        return {"elbo": -jnp.mean(elbo, axis=0) / dims, "iwae": -iwae / dims}

    return fn
