"""Gaussian mixtures with diagonal covariances: exact denoisers, scores and densities for every
process at every time (the ground truth that samplers, losses and likelihoods are tested on).

If ``x0 ~ sum_k w_k N(mu_k, diag(v_k))`` then ``x_t | k ~ N(alpha mu_k, diag(alpha^2 v_k + sigma^2))``,
``p(k | x_t)`` follows by Bayes, and ``E[x0 | x_t, k] = mu_k + alpha v_k / (alpha^2 v_k + sigma^2)
(x_t - alpha mu_k)``; the exact denoiser is the responsibility-weighted sum of those.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.processes import Process

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
    """``means [K, D]``, ``variances [K, D]``, ``weights [K]`` (numpy, float64). Samples have
    shape ``[B, *event_shape]`` with ``prod(event_shape) = D``."""

    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray
    event_shape: tuple[int, ...] = ()

    def __post_init__(self):
        k, d = self.means.shape
        if self.variances.shape != (k, d) or self.weights.shape != (k,):
            raise ValueError(f"shapes: means {self.means.shape}, variances "
                             f"{self.variances.shape}, weights {self.weights.shape}")
        if not self.event_shape:
            object.__setattr__(self, "event_shape", (d,))
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not hold {d} values")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _arrays(self, dtype):
        return (jnp.asarray(self.means, dtype), jnp.asarray(self.variances, dtype),
                jnp.asarray(np.log(self.weights / self.weights.sum()), dtype))

    def sample(self, key: Array, n: int, dtype=jnp.float32) -> tuple[Array, Array]:
        """``(x0 [n, *event_shape], component labels [n])``."""
        mu, var, logw = self._arrays(dtype)
        k1, k2 = jax.random.split(key)
        labels = jax.random.categorical(k1, logw, shape=(n,))
        z = jax.random.normal(k2, (n, self.dim), dtype)
        x = mu[labels] + jnp.sqrt(var[labels]) * z
        return x.reshape((n,) + self.event_shape), labels

    def _component_loglik(self, process: Process, x, t):
        mu, var, logw = self._arrays(x.dtype)
        a, s = process.alpha(t), process.sigma(t)
        xf = x.reshape(x.shape[0], 1, -1)
        tot = a**2 * var + s**2
        ll = -0.5 * jnp.sum((xf - a * mu) ** 2 / tot + jnp.log(2 * jnp.pi * tot), axis=-1)
        return ll + logw, xf, mu, var, a, tot

    def class_posterior(self, process: Process, x: Array, t) -> Array:
        """``p(k | x_t)``, shape ``[B, K]``; ``t`` a scalar."""
        return jnp.exp(self.class_log_posterior(process, x, t))

    def class_log_posterior(self, process: Process, x: Array, t) -> Array:
        """``log p(k | x_t)``, shape ``[B, K]``: the exact noisy classifier of guidance."""
        return jax.nn.log_softmax(self._component_loglik(process, x, t)[0], axis=-1)

    def logp(self, process: Process, x: Array, t) -> Array:
        """Exact ``log p_t(x)`` of the marginal at time ``t`` (scalar), shape ``[B]``."""
        return jax.nn.logsumexp(self._component_loglik(process, x, t)[0], axis=-1)

    def denoiser(self, process: Process, class_weights: Array | None = None):
        """The exact ``denoise(x, t) -> E[x0 | x_t]``. With ``class_weights [K]`` (e.g. a one-hot
        label) the mixture is restricted to those components: the exact conditional denoiser."""

        def denoise(x, t):
            t = jnp.asarray(t, x.dtype)
            if t.ndim:  # per-example times: vmap over the batch
                return jax.vmap(lambda xi, ti: denoise(xi[None], ti)[0])(x, t)
            ll, xf, mu, var, a, tot = self._component_loglik(process, x, t)
            if class_weights is not None:
                ll = ll + jnp.log(jnp.asarray(class_weights, x.dtype))
            r = jax.nn.softmax(ll, axis=-1)[..., None]
            cond_mean = mu + a * var / tot * (xf - a * mu)
            return jnp.sum(r * cond_mean, axis=1).reshape(x.shape)

        return denoise


def labelled_denoiser(mixture: GaussianMixture, process: Process):
    """``denoise(x, t, y)``: the exact class-conditional denoiser for labels ``y [B]`` in
    ``0..K-1``, and the unconditional one for ``y = K`` (the null label of guidance)."""
    k = mixture.num_components

    def denoise(x, t, y):
        t = jnp.asarray(t, x.dtype)
        ll, xf, mu, var, a, tot = mixture._component_loglik(process, x, t)
        allowed = jax.nn.one_hot(y, k, dtype=x.dtype) + (y == k)[:, None].astype(x.dtype)
        r = jax.nn.softmax(jnp.where(allowed > 0, ll, -jnp.inf), axis=-1)[..., None]
        cond_mean = mu + a * var / tot * (xf - a * mu)
        return jnp.sum(r * cond_mean, axis=1).reshape(x.shape)

    return denoise


def ring(num_modes: int = 8, radius: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """2-D ring of equal-weight isotropic modes."""
    ang = 2 * np.pi * np.arange(num_modes) / num_modes
    means = radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    return GaussianMixture(means, np.full_like(means, std**2), np.full(num_modes, 1 / num_modes))


def random_mixture(dim: int, num_modes: int, std: float, seed: int = 0, scale: float = 1.0,
                   event_shape: tuple[int, ...] = ()) -> GaussianMixture:
    """Modes at uniform points of ``[-scale, scale]^dim`` with std ``std`` and Dirichlet weights."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-scale, scale, size=(num_modes, dim))
    stds = std * rng.uniform(0.5, 1.5, size=(num_modes, dim))
    weights = rng.dirichlet(np.full(num_modes, 5.0))
    return GaussianMixture(means, stds**2, weights, event_shape)


def gaussian(dim: int, mean: float = 0.3, std: float = 0.7) -> GaussianMixture:
    """A single Gaussian: the case whose PF-ODE and likelihood are known in closed form."""
    return GaussianMixture(np.full((1, dim), mean), np.full((1, dim), std**2), np.ones(1))
