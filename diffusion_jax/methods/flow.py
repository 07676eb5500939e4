"""The normalizing flow as a method: maximum likelihood of uniformly dequantised 8-bit images
(Theis et al. 2016), so the loss is exactly the bits/dim of the dequantised data, an upper bound
on the discrete data's; sampling inverts the flow at a temperature.

    method = FlowMethod(Glow(levels=2, steps=8), tx, shape=(28, 28, 1))

Data-dependent initialisation inside the pure step: at step 0 the parameters are replaced by
``model.init`` on that step's (dequantised) batch, so every actnorm starts at zero mean and unit
variance of its input's data, and a resumed run never repeats it (the step is in the state).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from diffusion_jax.likelihood import bits_per_dim, dequantize, to_integers
from diffusion_jax.methods.base import MethodBase, slerp_rows
from diffusion_jax.methods.state import SingleNetwork, TrainState, apply_gradients, ema_decay_at
from diffusion_jax.models.flow import Glow, check_flow_size, latent_shapes, standard_normal_logp
from diffusion_jax.settings import BuildContext, ConfigError

SECTIONS = ("flow",)


@dataclasses.dataclass(frozen=True, eq=False)
class FlowMethod(SingleNetwork, MethodBase):
    """``temperature``: the standard deviation of the latents ``sample`` draws (1: the model's own
    distribution; Glow shows 0.7)."""
    model: Glow
    tx: optax.GradientTransformation
    shape: tuple[int, ...]
    temperature: float = 0.7
    ema_decay: float = 0.999
    ema_start: int = 0
    name: str = "flow"
    sample_options = frozenset({"temperature", "interpolate"})
    likelihood = "exact"

    def example_inputs(self) -> tuple:
        # a standard-normal batch: actnorms start near the identity until the first step
        return (jax.random.normal(jax.random.key(0), (16,) + self.shape),)

    def log_prob(self, params, x):
        """``log p(x)`` per image of continuous data ``x``."""
        zs, logdet = self.model.apply({"params": params}, x)
        return standard_normal_logp(zs) + logdet

    def train_step(self, state: TrainState, batch: dict, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        k_deq, k_init = jax.random.split(key)
        x = dequantize(k_deq, to_integers(batch["image"]))
        dim = math.prod(self.shape)
        ddi = lambda: nn.meta.unbox(self.model.init({"params": k_init}, x)["params"])
        params = jax.lax.cond(state.step == 0, ddi, lambda: state.params)
        ema_in = jax.lax.cond(state.step == 0, lambda: params, lambda: state.ema_params)

        def loss_fn(p):
            return jnp.mean(bits_per_dim(self.log_prob(p, x), dim))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        params, opt_state, ema = apply_gradients(
            self.tx, params, state.opt_state, grads, ema_in,
            ema_decay_at(state.step, self.ema_decay, self.ema_start))
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    def bits_per_dim(self, params, x, key) -> dict:
        """Per-image ``{"exact": bits/dim}`` of 8-bit images ``x`` in [-1, 1], uniformly
        dequantised with ``key``: exact for the dequantised data (one draw)."""
        return _bpd(self)(params, x, key)

    def sample(self, params, key, n: int, temperature: float | None = None):
        t = self.temperature if temperature is None else temperature
        keys = jax.random.split(key, self.model.levels)
        zs = [t * jax.random.normal(k, (n,) + s)
              for k, s in zip(keys, latent_shapes(self.shape, self.model.levels))]
        return _reverse(self.model)(params, zs)

    def encode(self, params, x):
        return _forward(self.model)(params, x)[0]

    def decode(self, params, zs):
        return _reverse(self.model)(params, zs)


    def interpolate(self, params, key, rows: int, steps: int, test_images, labels):
        """``rows x steps`` images along one slerp path per row through all levels' latents,
        between the exact latents of consecutive test images."""
        zs = self.encode(params, jnp.asarray(test_images(2 * rows)))
        flat = jnp.concatenate([z.reshape(2 * rows, -1) for z in zs], -1)
        path = slerp_rows(flat[:rows], flat[rows:], steps)
        parts, i = [], 0
        for z in zs:
            size = math.prod(z.shape[1:])
            parts.append(path[:, i: i + size].reshape((rows * steps,) + z.shape[1:]))
            i += size
        return self.decode(params, parts)


@functools.lru_cache(maxsize=8)
def _reverse(model: Glow):
    return jax.jit(lambda p, zs: model.apply({"params": p}, zs, method=Glow.reverse))


@functools.lru_cache(maxsize=8)
def _forward(model: Glow):
    return jax.jit(lambda p, x: model.apply({"params": p}, x))


@functools.lru_cache(maxsize=8)
def _bpd(method: FlowMethod):
    dim = math.prod(method.shape)

    @jax.jit
    def fn(params, x, key):
        xd = dequantize(key, to_integers(x))
        return {"exact": bits_per_dim(method.log_prob(params, xd), dim)}

    return fn


# -- settings and build ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FlowSpec:
    temperature: float = 0.7     # sampling temperature (std of the latents)


def build(ctx: BuildContext) -> FlowMethod:
    data, train = ctx.data, ctx.train
    if data.dim:
        raise ConfigError("the flow is for images; data.dim is set (vector data)")
    f = ctx.typed(FlowSpec, "flow")
    model = ctx.typed(Glow, "model", required=True)
    try:
        check_flow_size(data.image_size, model.levels)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return FlowMethod(model, ctx.tx, data.shape, f.temperature, train.ema_decay, train.ema_start)
