"""Post-training quantisation of a network's weights (and, emulated, its activations), and the
model wrapper that samples with the quantised tree.

    qparams = quantize_params(params, "int8")         # on the host: int8 kernels + scales
    model_q = QuantizedModel(model, "int8")           # apply() dequantises inside the program
    model_q.apply({"params": qparams}, x, t)

Modes (``MODES``):

* ``bf16``: every conv/dense kernel stored as bfloat16 (half the bytes; 8 bits of mantissa,
  relative error <= 2**-8 per weight), computed in float32.
* ``int8``: weight-only. Every conv/dense kernel (a ``kernel`` leaf with 2+ dimensions) is stored
  as int8 ``q`` with one float32 scale per output channel, ``s = max|w| / 127`` over the channel's
  inputs (symmetric absmax, round to nearest). Biases, norms and embeddings stay float32.
* ``int4``: weight-only, ``q`` in ``[-7, 7]`` (``s = max|w| / 7``), two values packed per byte:
  a kernel with an odd number of weights cannot be packed and is refused, naming the layer.
* ``int8-act``: int8 weights, and each conv/dense input rounded to int8 with one absmax scale per
  example (dynamic range), emulated: the rounded values are multiplied in float32, which equals an
  integer kernel's int32 accumulation rescaled, up to float32 rounding. Attention's
  activation-by-activation products stay float32.

Weights are dequantised inside the compiled sampler (``QuantizedModel.apply``), so the device
holds the packed bytes; XLA:CPU computes in float32 either way (it has no fast int8 or int4
convolution: qwix's int8 convolution runs ~25x slower than float32 there, see the README).

The bounds the tests check follow from rounding to nearest: ``|w - s q| <= s / 2`` per weight, so a
layer's output moves by at most ``(s_j / 2) * sum_i |x_i|`` in output channel ``j`` (weights), plus
``(s_x / 2) * sum_i |w_ij|`` (activations, ``s_x = max|x| / 127`` per example).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffusion_jax.compress.packed import Packed, is_packed, map_kernels


class Mode(NamedTuple):
    bits: int
    activations: bool


MODES = {"bf16": Mode(16, False), "int8": Mode(8, False), "int4": Mode(4, False),
         "int8-act": Mode(8, True)}
QUANTIZED_LAYERS = (nn.Conv, nn.Dense, nn.DenseGeneral, nn.ConvTranspose)


def check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise ValueError(f"--quantize {mode!r}: choose one of {', '.join(MODES)}")
    return MODES[mode]


@struct.dataclass
class QTensor(Packed):
    """A kernel stored as integers: ``q`` (int8, or uint8 holding two int4 values per byte) and
    ``scale`` (float32, one per output channel, shaped to broadcast against the kernel)."""
    q: Any
    scale: Any
    shape: tuple = struct.field(pytree_node=False)
    bits: int = struct.field(pytree_node=False)

    def materialize(self):
        q = self.q
        if self.bits == 4:
            q = unpack_int4(q, int(np.prod(self.shape)))
        return q.reshape(self.shape).astype(jnp.float32) * self.scale


@struct.dataclass
class Cast(Packed):
    """A kernel stored in a narrower float type (bfloat16), widened to float32 to compute."""
    value: Any

    def materialize(self):
        return jnp.asarray(self.value).astype(jnp.float32)


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def quantize_array(w, bits: int) -> QTensor:
    """Symmetric per-output-channel (last axis) absmax quantisation, round to nearest."""
    w = np.asarray(w, np.float32)
    top = np.max(np.abs(w), axis=tuple(range(w.ndim - 1)), keepdims=True)
    scale = np.where(top > 0, top / qmax(bits), 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -qmax(bits), qmax(bits)).astype(np.int8)
    stored = pack_int4(q.reshape(-1)) if bits == 4 else q
    return QTensor(stored, scale, tuple(w.shape), bits)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Values in [-8, 7], an even count -> bytes (element 2i in the low nibble, 2i+1 high)."""
    u = q.astype(np.uint8) & 0x0F
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, n: int):
    """``pack_int4``'s inverse (works on numpy and traced arrays): ``n`` int8 values."""
    p = jnp.asarray(packed, jnp.uint8)
    lo, hi = (p & 0x0F).astype(jnp.int8), (p >> 4).astype(jnp.int8)
    sign = lambda v: jnp.where(v > 7, v - 16, v)
    return jnp.stack([sign(lo), sign(hi)], axis=-1).reshape(-1)[:n]


def quantize_params(params, mode: str):
    """``params`` with every conv/dense kernel replaced by a ``QTensor`` (host numpy arrays)."""
    bits = check_mode(mode).bits
    seen = []

    def one(name, leaf):
        seen.append(name)
        if bits == 4 and np.size(leaf) % 2:
            raise ValueError(f"--quantize int4 packs two weights per byte; layer {name} has "
                             f"{np.size(leaf)} weights (shape {tuple(np.shape(leaf))}, odd): "
                             "use --quantize int8")
        if bits == 16:
            return Cast(np.asarray(leaf, np.float32).astype(jnp.bfloat16))
        return quantize_array(leaf, bits)

    out = map_kernels(one, params)
    if not seen and not any(map(is_packed, jax.tree_util.tree_leaves(out, is_leaf=is_packed))):
        raise ValueError(f"--quantize {mode}: the network holds no kernel to quantize (the "
                         "layers it supports: " + ", ".join(c.__name__ for c in QUANTIZED_LAYERS)
                         + ", whose 'kernel' parameters have 2+ dimensions)")
    return out


def fake_quantize_kernel(w, bits: int):
    """Quantisation-aware training's weights: ``w`` rounded as ``quantize_array`` rounds it in the
    forward pass, the gradient passed straight through (Bengio et al. 2013's estimator)."""
    if bits == 16:
        rounded = w.astype(jnp.bfloat16).astype(w.dtype)
    else:
        top = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)), keepdims=True)
        s = jax.lax.stop_gradient(jnp.where(top > 0, top / qmax(bits), 1.0))
        rounded = jnp.clip(jnp.round(w / s), -qmax(bits), qmax(bits)) * s
    return w + jax.lax.stop_gradient(rounded - w)


def fake_quantize_rows(x, bits: int = 8):
    """``x`` rounded to ``bits`` with one absmax scale per example (leading axis)."""
    axes = tuple(range(1, x.ndim))
    top = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    s = jnp.where(top > 0, top / qmax(bits), 1.0)
    return jnp.clip(jnp.round(x / s), -qmax(bits), qmax(bits)) * s


def quantize_inputs(next_fun, args, kwargs, context):
    """A flax interceptor: the first argument of a conv/dense layer's ``__call__`` rounded to
    int8 per example."""
    called = context.method_name
    if called == "__call__" and isinstance(context.module, QUANTIZED_LAYERS) and args:
        args = (fake_quantize_rows(args[0]),) + tuple(args[1:])
    return next_fun(*args, **kwargs)
