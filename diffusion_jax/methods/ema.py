"""Exponential moving average of parameters."""

from __future__ import annotations

import jax


def ema_decay_from_halflife(halflife_images: float, batch_size: int) -> float:
    """EDM's EMA: decay per step such that the weight halves every ``halflife_images`` images."""
    return 0.5 ** (batch_size / max(halflife_images, 1e-8))


def ema_update(ema, params, decay):
    """``ema <- decay * ema + (1 - decay) * params`` leaf-wise (``decay`` may be traced)."""
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
