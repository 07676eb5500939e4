"""The pure train step ``(state, batch, key) -> (state, metrics)``."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from diffusion_jax.conditioning import Conditioning
from diffusion_jax.losses import LossConfig, denoising_loss
from diffusion_jax.parameterization import Parameterization
from diffusion_jax.processes import Process
from diffusion_jax.train.ema import ema_update
from diffusion_jax.train.state import TrainState


def make_apply(model) -> Callable:
    """``apply(params, x, t, cond, train, rngs)`` with ``cond`` a dict of conditioning kwargs."""
    def apply(params, x, t, cond, train, rngs):
        return model.apply({"params": params}, x, t, train=train, rngs=rngs, **(cond or {}))
    return apply


def make_train_step(model, process: Process, parameterization: Parameterization,
                    loss_cfg: LossConfig, tx: optax.GradientTransformation, ema_decay: float,
                    ema_start: int = 0, conditioning: Conditioning | None = None) -> Callable:
    """Build ``train_step(state, batch, key)``; the per-step key is ``fold_in(key, step)``, so a
    resumed run draws exactly the noise the uninterrupted run would have drawn."""
    apply = make_apply(model)

    def train_step(state: TrainState, batch: dict, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        cond = None
        if conditioning is not None:  # its own stream: the loss's noise is unchanged by it
            cond = conditioning(batch, jax.random.fold_in(key, 0x7FFFFFFF))

        def loss_fn(params):
            return denoising_loss(apply, params, batch["image"], key, process, parameterization,
                                  loss_cfg, cond=cond, train=True)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = jnp.where(state.step < ema_start, 0.0, ema_decay)
        ema = ema_update(state.ema_params, params, decay)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    return train_step
