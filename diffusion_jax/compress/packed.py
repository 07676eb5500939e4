"""What every compression shares: kernels stored in another form (``Packed``: int8/int4 values
and scales, low-rank factors) that ``materialize`` turns back into the dense arrays the network
takes, inside the sampler's compiled program; their byte count; and ``CompressedModel``, the
model wrapper that samples from such a tree."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np


class Packed:
    """A kernel stored compressed (a pytree whose leaves are its stored arrays)."""

    def materialize(self):
        raise NotImplementedError


def is_packed(x) -> bool:
    return isinstance(x, Packed)


def path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def map_kernels(fn: Callable[[str, Any], Any], params):
    """``fn(layer_path, kernel)`` on every conv/dense kernel (a ``kernel`` leaf of 2+ dimensions,
    not already packed); every other leaf unchanged."""
    def one(path, leaf):
        if is_packed(leaf):
            return leaf
        name = path_name(path)
        if not name.endswith("kernel") or np.ndim(leaf) < 2:
            return leaf
        return fn(name, leaf)

    return jax.tree_util.tree_map_with_path(one, nn.unbox(params), is_leaf=is_packed)


def materialize(params):
    """Every ``Packed`` kernel back to a dense float32 array."""
    return jax.tree_util.tree_map(lambda x: x.materialize() if is_packed(x) else x, params,
                                  is_leaf=is_packed)


def param_bytes(params) -> int:
    """Bytes of every stored array (a packed kernel counts what it stores)."""
    return int(sum(x.nbytes for x in jax.tree_util.tree_leaves(nn.unbox(params))))


def param_count(params) -> tuple[int, int]:
    """``(stored values, nonzero values)`` over the tree (scales and factors included)."""
    leaves = jax.tree_util.tree_leaves(nn.unbox(params))
    return (int(sum(np.size(x) for x in leaves)),
            int(sum(np.count_nonzero(np.asarray(x)) for x in leaves)))


@dataclasses.dataclass(frozen=True)
class CompressedModel:
    """``model`` taking a tree with ``Packed`` kernels: ``apply`` materialises them inside the
    caller's compiled program and, with ``interceptor`` (e.g. int8 activations), runs the model
    under it (a flax method interceptor)."""
    model: Any
    interceptor: Callable | None = None

    @property
    def config(self):
        return self.model.config

    def apply(self, variables, *args, **kwargs):
        variables = {**variables, "params": materialize(variables["params"])}
        if self.interceptor is None:
            return self.model.apply(variables, *args, **kwargs)
        with nn.intercept_methods(self.interceptor):
            return self.model.apply(variables, *args, **kwargs)
