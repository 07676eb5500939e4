"""Magnitude pruning: in every conv/dense kernel, exactly ``round(sparsity * size)`` weights, the
smallest in magnitude (ties broken by position), set to zero. The tree keeps its dense layout, so
it is no smaller and no faster on dense kernels: what pruning buys is the count of nonzero
weights (``packed.param_count``), which a sparse format or sparse kernel would turn into bytes
and time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.compress.packed import map_kernels


def check_sparsity(sparsity: float) -> float:
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"--prune {sparsity}: the sparsity must be in (0, 1), e.g. 0.5 zeroes "
                         "half of each conv/dense kernel's weights")
    return float(sparsity)


def prune_array(w, sparsity: float) -> np.ndarray:
    w = np.array(w, np.float32)
    flat = w.reshape(-1)
    k = int(round(sparsity * flat.size))
    flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0.0
    return w


def prune_params(params, sparsity: float):
    """``params`` with every conv/dense kernel pruned to ``sparsity`` (host numpy arrays)."""
    sparsity = check_sparsity(sparsity)
    return map_kernels(lambda name, w: prune_array(w, sparsity), params)


def fake_prune_kernel(w, sparsity: float):
    """Pruning-aware training's weights: the ``round(sparsity * size)`` smallest magnitudes zeroed
    in the forward pass (the mask recomputed from the current weights), the gradient passed
    straight through to every weight, so a pruned weight can grow back."""
    k = int(round(sparsity * w.size))
    order = jnp.argsort(jnp.abs(w).reshape(-1), stable=True)
    mask = jnp.ones(w.size, w.dtype).at[order[:k]].set(0.0).reshape(w.shape)
    return w + jax.lax.stop_gradient(w * mask - w)
