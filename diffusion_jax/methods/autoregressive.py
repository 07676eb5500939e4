"""Autoregressive models as a method: a PixelCNN (``models/pixelcnn.py``) trained by maximum
likelihood of the 8-bit image under a per-pixel mixture of discretized logistics, so the loss is
the exact bits/dim of the discrete data (no dequantisation, no bound); sampling draws the pixels
one at a time in raster order inside one ``lax.scan``: one network evaluation per pixel, so
NFE = H x W (784 for Fashion-MNIST), the cost the course's "sequential builder" pays.

    method = AutoregressiveMethod(PixelCNN(32, 4, 5), tx, shape=(28, 28, 1))
    images = method.sample(params, key, 16)

Grayscale only: colour images would need PixelCNN++'s channel-wise conditioning of the means.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from diffusion_jax.likelihood import NUM_BINS, logistic_mixture_logp
from diffusion_jax.methods.base import MethodBase, SampleRequest
from diffusion_jax.methods.state import SingleNetwork, TrainState, apply_gradients, ema_decay_at
from diffusion_jax.models.pixelcnn import PixelCNN, receptive_field
from diffusion_jax.settings import BuildContext, ConfigError

SECTIONS = ("autoregressive",)


def quantize(v):
    """Values in [-1, 1] to the nearest of the 256 levels ``u8 / 127.5 - 1``."""
    return jnp.round((jnp.clip(v, -1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0


def sample_mixture(key, logits, means, log_scales, temperature: float = 1.0):
    """One 8-bit value per pixel from a mixture of discretized logistics (``[..., K]`` each):
    the component by Gumbel-max on ``logits / temperature``, then the logistic by inverse CDF
    with its scale times ``temperature``, quantized to the 256 levels (the end bins take the
    tails, as in the likelihood)."""
    k_c, k_u = jax.random.split(key)
    t = jnp.maximum(temperature, 1e-6)
    gumbel = jax.random.gumbel(k_c, logits.shape)
    pick = jax.nn.one_hot(jnp.argmax(logits / t + gumbel, -1), logits.shape[-1])
    mean = jnp.sum(pick * means, -1)
    scale = jnp.exp(jnp.sum(pick * log_scales, -1)) * temperature
    u = jax.random.uniform(k_u, mean.shape, minval=1e-5, maxval=1.0 - 1e-5)
    return quantize(mean + scale * (jnp.log(u) - jnp.log1p(-u)))


def sample_pixels(apply: Callable, key, shape: tuple[int, ...], temperature: float = 1.0,
                  window: tuple[int, int] | None = None):
    """``[n, H, W, 1]`` images drawn pixel by pixel in raster order: step ``p`` evaluates
    ``apply(x) -> (logits, means, log_scales)`` on the image so far and draws pixel ``p``. One
    ``lax.scan`` of ``H * W`` network evaluations. ``window = (rows, cols)``: the network's
    receptive field (``models.pixelcnn.receptive_field``); each evaluation then sees only the
    ``rows + 1`` by ``2 cols + 1`` crop around the pixel that its output depends on (exactly the
    same output, a fraction of the work)."""
    n, h, w, _ = shape
    rows, cols = window or (h, w)
    hc, wc = min(h, rows + 1), min(w, 2 * cols + 1)

    def step(x, inp):
        p, k = inp
        i, j = p // w, p % w
        r0, c0 = jnp.clip(i - rows, 0, h - hc), jnp.clip(j - cols, 0, w - wc)
        crop = jax.lax.dynamic_slice(x, (0, r0, c0, 0), (n, hc, wc, x.shape[-1]))
        logits, means, log_scales = apply(crop)
        at = lambda a: jax.lax.dynamic_slice(a, (0, i - r0, j - c0, 0),
                                             (n, 1, 1, a.shape[-1]))[:, 0, 0]
        v = sample_mixture(k, at(logits), at(means), at(log_scales), temperature)
        return jax.lax.dynamic_update_slice(x, v[:, None, None, None].astype(x.dtype),
                                            (0, i, j, 0)), None

    x0 = jnp.zeros(shape, jnp.float32)
    x, _ = jax.lax.scan(step, x0, (jnp.arange(h * w), jax.random.split(key, h * w)))
    return x


@dataclasses.dataclass(frozen=True, eq=False)
class AutoregressiveMethod(SingleNetwork, MethodBase):
    """``temperature``: the default of ``sample`` (1: the model's own distribution)."""
    model: PixelCNN
    tx: optax.GradientTransformation
    shape: tuple[int, ...]
    temperature: float = 1.0
    ema_decay: float = 0.999
    ema_start: int = 0
    name: str = "autoregressive"
    sample_options = frozenset({"temperature"})
    likelihood = "exact"

    def example_inputs(self) -> tuple:
        return (jnp.zeros((1,) + self.shape),)

    def log_prob(self, params, x):
        """``log P(x)`` per image of 8-bit images ``x`` in [-1, 1] (nats, exact)."""
        logits, means, log_scales = self.model.apply({"params": params}, x)
        lp = logistic_mixture_logp(x, logits, means, log_scales, NUM_BINS)
        return jnp.sum(lp.reshape(lp.shape[0], -1), -1)

    def train_step(self, state: TrainState, batch: dict, key: jax.Array):
        dims = math.prod(self.shape) * math.log(2.0)

        def loss_fn(params):
            return -jnp.mean(self.log_prob(params, batch["image"])) / dims

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        params, opt_state, ema = apply_gradients(
            self.tx, state.params, state.opt_state, grads, state.ema_params,
            ema_decay_at(state.step, self.ema_decay, self.ema_start))
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    def bits_per_dim(self, params, x, key) -> dict:
        """Per-image ``{"discrete": bits/dim}`` of 8-bit images ``x`` in [-1, 1]: exact."""
        return _bpd(self)(params, x)

    def sample(self, params, key, n: int, temperature: float | None = None):
        t = self.temperature if temperature is None else temperature
        return _sampler(self, n, float(t))(params, key)


    def nfe(self, req: SampleRequest) -> int:
        return math.prod(self.shape[:2])


@functools.lru_cache(maxsize=8)
def _bpd(method: AutoregressiveMethod):
    dims = math.prod(method.shape) * math.log(2.0)
    return jax.jit(lambda params, x: {"discrete": -method.log_prob(params, x) / dims})


@functools.lru_cache(maxsize=8)
def _sampler(method: AutoregressiveMethod, n: int, temperature: float):
    def fn(params, key):
        apply = lambda x: method.model.apply({"params": params}, x)
        return sample_pixels(apply, key, (n,) + tuple(method.shape), temperature,
                             receptive_field(method.model.blocks))
    return jax.jit(fn)


# -- settings and build ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AutoregressiveSpec:
    temperature: float = 1.0     # sampling temperature (1: the model's own distribution)


def build(ctx: BuildContext) -> AutoregressiveMethod:
    data, train = ctx.data, ctx.train
    if data.dim or data.channels != 1:
        raise ConfigError(f"the autoregressive family models grayscale images (data.channels=1);"
                          f" this experiment's data has shape {data.shape}")
    a = ctx.typed(AutoregressiveSpec, "autoregressive")
    if a.temperature <= 0:
        raise ConfigError(f"autoregressive.temperature={a.temperature} must be > 0")
    model = ctx.typed(PixelCNN, "model", required=True)
    for field in ("channels", "blocks", "num_mix"):
        if getattr(model, field) < 1:
            raise ConfigError(f"model.{field}={getattr(model, field)} must be >= 1")
    return AutoregressiveMethod(model, ctx.tx, data.shape, a.temperature, train.ema_decay,
                                train.ema_start)
