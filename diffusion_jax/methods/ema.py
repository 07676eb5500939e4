"""Exponential moving average of parameters."""

from __future__ import annotations

import jax


def ema_update(ema, params, decay):
    """``ema <- decay * ema + (1 - decay) * params`` leaf-wise (``decay`` may be traced)."""
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
