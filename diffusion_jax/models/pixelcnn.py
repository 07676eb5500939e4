"""A PixelCNN++-style autoregressive network (Salimans et al. 2017; gated blocks of van den Oord
et al. 2016): a vertical stack that sees the rows above a pixel and a horizontal stack that also
sees the pixels to its left, built from shifted convolutions (no blind spot), with gated
residual blocks. The output at pixel ``(i, j)`` depends only on the pixels before it in raster
order; per pixel it gives the parameters of a mixture of ``num_mix`` discretized logistics
(grayscale images: one channel).

    net = PixelCNN(channels=32, blocks=4, num_mix=5)
    logits, means, log_scales = net.apply({"params": p}, x)      # each [B, H, W, num_mix]

Kernels carry the logical axis names of ``layers`` (``conv_in``, ``conv_out``).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import KERNEL_AXES_CONV


def _conv(features: int, kernel: tuple[int, int], name=None, zero: bool = False):
    init = nn.initializers.zeros if zero else nn.initializers.variance_scaling(
        1.0, "fan_avg", "uniform")
    return nn.Conv(features, kernel, padding="VALID", name=name,
                   kernel_init=nn.with_logical_partitioning(init, KERNEL_AXES_CONV))


def down_shift(x):
    """Row ``i`` <- row ``i - 1`` (zeros in row 0): what a pixel sees becomes strictly above it."""
    return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def right_shift(x):
    """Column ``j`` <- column ``j - 1`` (zeros in column 0)."""
    return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


class DownShiftedConv(nn.Module):
    """A ``kh x kw`` convolution whose output at ``(i, j)`` sees rows ``i-kh+1 .. i`` and columns
    ``j-(kw-1)/2 .. j+(kw-1)/2``: nothing below the pixel."""
    features: int
    kernel: tuple[int, int] = (2, 3)
    zero: bool = False

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel
        x = jnp.pad(x, ((0, 0), (kh - 1, 0), ((kw - 1) // 2, (kw - 1) // 2), (0, 0)))
        return _conv(self.features, self.kernel, zero=self.zero)(x)


class DownRightShiftedConv(nn.Module):
    """A ``kh x kw`` convolution whose output at ``(i, j)`` sees rows ``i-kh+1 .. i`` and columns
    ``j-kw+1 .. j``: nothing below and nothing to the right."""
    features: int
    kernel: tuple[int, int] = (2, 2)
    zero: bool = False

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel
        x = jnp.pad(x, ((0, 0), (kh - 1, 0), (kw - 1, 0), (0, 0)))
        return _conv(self.features, self.kernel, zero=self.zero)(x)


class GatedResBlock(nn.Module):
    """``x + a * sigmoid(b)`` with ``[a, b] = conv(elu(conv(elu(x)) + nin(elu(aux))))``: the
    gated residual block of PixelCNN++; ``conv`` is causal (shifted), ``aux`` the other stack."""
    features: int
    right: bool = False       # the horizontal stack's down-right-shifted convolutions

    @nn.compact
    def __call__(self, x, aux=None):
        causal = DownRightShiftedConv if self.right else DownShiftedConv
        h = causal(self.features)(nn.elu(x))
        if aux is not None:
            h = h + _conv(self.features, (1, 1))(nn.elu(aux))
        h = causal(2 * self.features, zero=True)(nn.elu(h))
        a, b = jnp.split(h, 2, axis=-1)
        return x + a * nn.sigmoid(b)


class PixelCNN(nn.Module):
    """``channels``: the stacks' width; ``blocks``: gated blocks per stack; ``num_mix``: logistic
    components per pixel. Input: ``[B, H, W, 1]`` images in [-1, 1]."""
    channels: int = 32
    blocks: int = 4
    num_mix: int = 5

    @nn.compact
    def __call__(self, x):
        x = jnp.concatenate([x, jnp.ones_like(x[..., :1])], -1)  # ones: the padding is visible
        u = down_shift(DownShiftedConv(self.channels, (2, 3))(x))
        ul = (down_shift(DownShiftedConv(self.channels, (1, 3))(x))
              + right_shift(DownRightShiftedConv(self.channels, (2, 1))(x)))
        for _ in range(self.blocks):
            u = GatedResBlock(self.channels)(u)
            ul = GatedResBlock(self.channels, right=True)(ul, u)
        out = _conv(3 * self.num_mix, (1, 1))(nn.elu(ul))
        logits, means, log_scales = jnp.split(out, 3, axis=-1)
        return logits, jnp.tanh(means), jnp.maximum(log_scales, -7.0)


def receptive_field(blocks: int) -> tuple[int, int]:
    """``(rows, cols)``: the output at ``(i, j)`` depends only on input rows ``i - rows .. i``
    and columns ``j - cols .. j + cols``. The input layer reaches 3 rows up and 2 columns; each
    block's two 2-row, 3-wide convolutions of the vertical stack add 2 of each (the horizontal
    stack reaches no further). ``tests/test_autoregressive.py`` checks a window this size gives
    the full network's outputs."""
    return 3 + 2 * blocks, 2 + 2 * blocks
