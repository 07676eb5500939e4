"""An experiment config translated into typed objects. The config is read here (and in the loop
that calls this) and nowhere below: models, processes, losses and samplers take typed arguments."""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax import parameterization as Z
from diffusion_jax import processes
from diffusion_jax.conditioning import Conditioning
from diffusion_jax.losses import LossConfig
from diffusion_jax.models import MLP, UNet, UNetConfig, check_image_size
from diffusion_jax.train.state import make_optimizer


def data_shape(config) -> tuple[int, ...]:
    """One example's shape: ``(dim,)`` for vector data, else ``(size, size, channels)``."""
    d = config.data
    return (d.dim,) if d.get("dim") else (d.image_size, d.image_size, d.channels)


def build(config):
    """``(model, process, parameterization, loss_config, optimizer)``."""
    m, d = config.model, config.data
    if m.name == "mlp":
        model = MLP(m.hidden, m.depth, m.time_scale)
    elif m.name != "unet":
        raise ValueError(f"unknown model {m.name!r}; valid: 'unet', 'mlp'")
    else:
        model = _unet(m, d)
    pkw = {k: v for k, v in config.process.items() if k != "name"}
    process = processes.make_process(config.process.name, **pkw)
    zkw = {k: v for k, v in config.parameterization.items() if k != "name"}
    par = Z.make_parameterization(config.parameterization.name, **zkw)
    loss = LossConfig(**config.loss)
    o = config.optimizer
    tx = make_optimizer(o.lr, o.warmup_steps, config.train.steps, o.schedule, o.weight_decay,
                        o.b2, o.grad_clip, o.grad_accum)
    return model, process, par, loss, tx


def _unet(m, d):
    check_image_size(d.image_size, m.channel_mult)
    low = m.get("low_res_size", 0)
    if low and d.image_size % low:
        raise ValueError(f"model.low_res_size={low} must divide data.image_size={d.image_size}")
    ucfg = UNetConfig(channels=m.channels, channel_mult=tuple(m.channel_mult),
                      num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
                      num_heads=m.num_heads, dropout=m.dropout,
                      num_classes=d.num_classes if m.conditional else 0, time_scale=m.time_scale,
                      context_dim=m.get("context_dim", 0), low_res_size=low)
    return UNet(ucfg, dtype=jnp.dtype(m.dtype))


def conditioning(config) -> Conditioning:
    """What the training step feeds the model besides ``(x_t, t)``: labels (with CFG dropout
    ``model.cond_drop``, default 0.1), a context from the batch, a downsampled low-res image."""
    m, d = config.model, config.data
    return Conditioning(num_classes=d.num_classes if m.get("conditional") else 0,
                        context_dim=m.get("context_dim", 0), low_res_size=m.get("low_res_size", 0),
                        drop_prob=m.get("cond_drop", 0.1))


def example_inputs(config) -> tuple:
    """Positional arguments for ``model.init``: ``(x, t[, y, train, context, low_res])``."""
    shape = data_shape(config)
    x, t = jnp.zeros((1,) + shape), jnp.zeros((1,))
    c = conditioning(config)
    if not c.active:
        return x, t
    y = jnp.zeros((1,), jnp.int32) if c.num_classes else None
    ctx = jnp.zeros((1, 1, c.context_dim)) if c.context_dim else None
    low = jnp.zeros((1, c.low_res_size, c.low_res_size, shape[-1])) if c.low_res_size else None
    return x, t, y, False, ctx, low
