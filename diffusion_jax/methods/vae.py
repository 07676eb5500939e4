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
import optax

from diffusion_jax.likelihood import discretized_logistic_logp
from diffusion_jax.methods.base import MethodBase, slerp_rows
from diffusion_jax.methods.state import SingleNetwork, TrainState, apply_gradients, ema_decay_at
from diffusion_jax.models.gan import check_gan_size
from diffusion_jax.models.vae import VAE
from diffusion_jax.settings import BuildContext, ConfigError

SECTIONS = ("vae",)

def gaussian_kl(mu, logvar):
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over all but the batch axis."""
    kl = 0.5 * (mu ** 2 + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)


def _sum(v):
    return jnp.sum(v.reshape(v.shape[0], -1), axis=-1)


def log_normal(z, mu, logvar):
    return _sum(-0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 * jnp.exp(-logvar)))


@dataclasses.dataclass(frozen=True, eq=False)
class VAEMethod(SingleNetwork, MethodBase):
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
    sample_options = frozenset({"temperature", "interpolate"})
    likelihood = "bound"

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


    def interpolate(self, params, key, rows: int, steps: int, test_images, labels):
        """``rows x steps`` decoded latents along slerp paths between the posterior means of
        consecutive test images."""
        z = self.encode(params, jnp.asarray(test_images(2 * rows)))
        return self.decode(params, slerp_rows(z[:rows], z[rows:], steps))


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


# -- settings and build ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VAESpec:
    beta: float = 1.0            # KL weight (small for latent diffusion's autoencoder)
    kl_warmup: int = 0           # steps of linear KL warm-up
    iw_samples: int = 64         # k of the importance-weighted bound


def build(ctx: BuildContext) -> VAEMethod:
    data, train = ctx.data, ctx.train
    if data.dim:
        raise ConfigError("the VAE is for images; data.dim is set (vector data)")
    v = ctx.typed(VAESpec, "vae")
    model = ctx.typed(VAE, "model", required=True, image_size=data.image_size,
                      channels=data.channels)
    try:
        check_gan_size(data.image_size, model.levels)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return VAEMethod(model, ctx.tx, data.shape, v.beta, v.kl_warmup, v.iw_samples,
                     train.ema_decay, train.ema_start)
