"""DCGAN networks (Radford et al. 2016) for the GAN method: a generator ``z [, y] -> image`` and a
discriminator ``image [, y] -> logit`` with optional spectral normalisation (Miyato et al. 2018)
on every layer and a projection head for class-conditional training (Miyato & Koyama 2018).

Spectral normalisation keeps its power-iteration vectors ``u`` (and the last ``sigma``) in the
``"spectral"`` collection: the train state holds them, the checkpoint saves them, and a step
updates them only where ``update_stats=True`` (the discriminator's pass on real images).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import KERNEL_AXES_CONV, KERNEL_AXES_DENSE

SPECTRAL = "spectral"  # the collection of spectral normalisation's power-iteration state


def _conv_init():
    return nn.with_logical_partitioning(nn.initializers.normal(0.02), KERNEL_AXES_CONV)


def _dense_init():
    return nn.with_logical_partitioning(nn.initializers.normal(0.02), KERNEL_AXES_DENSE)


def check_gan_size(image_size: int, levels: int) -> None:
    base = image_size // 2 ** levels
    if image_size % 2 ** levels or base < 2:
        raise ValueError(f"data.image_size={image_size} must be divisible by 2**model.levels="
                         f"{2 ** levels} with at least 2 pixels left (levels={levels}): "
                         "change model.levels")


class Generator(nn.Module):
    """``z [B, z_dim] (, y [B]) -> images [B, S, S, C]`` in (-1, 1): a dense layer to
    ``S/2^L x S/2^L x ch*2^L``, then ``L`` x [2x nearest upsampling, 3x3 conv] halving the width,
    GroupNorm (per sample: sampling does not depend on the batch) and ReLU, then a 3x3 conv and
    tanh. Class-conditional: a learned class embedding is concatenated to ``z``."""
    image_size: int
    channels: int
    ch: int = 64
    levels: int = 2
    num_classes: int = 0

    @nn.compact
    def __call__(self, z, y=None):
        if self.num_classes:
            z = jnp.concatenate([z, nn.Embed(self.num_classes, z.shape[-1], name="embed")(y)], -1)
        base, width = self.image_size // 2 ** self.levels, self.ch * 2 ** self.levels
        h = nn.Dense(base * base * width, kernel_init=_dense_init(), name="project")(z)
        h = h.reshape(z.shape[0], base, base, width)
        for i in range(self.levels):
            h = nn.relu(nn.GroupNorm(min(32, width // 4) or 1)(h))
            width //= 2
            b, hh, ww, c = h.shape  # resize-convolution: no checkerboard (Odena et al. 2016), and
            h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")  # 10x faster than a
            h = nn.Conv(width, (3, 3), padding="SAME", kernel_init=_conv_init(),  # transposed
                        name=f"up{i}")(h)  # conv's backward on XLA:CPU
        h = nn.relu(nn.GroupNorm(min(32, width // 4) or 1)(h))
        return jnp.tanh(nn.Conv(self.channels, (3, 3), padding="SAME", kernel_init=_conv_init(),
                                name="out")(h))


def _l2_normalize(v, eps: float = 1e-12):
    return v / jnp.sqrt(jnp.sum(v * v) + eps)


def power_iteration(matrix, u, n_iter: int = 1):
    """``(sigma, u)``: ``n_iter`` power iterations on ``matrix [m, n]`` from ``u [n]``; ``sigma``
    estimates its largest singular value (exact in the limit), differentiable in ``matrix``
    with ``u`` and ``v`` held fixed (Miyato et al. 2018)."""
    for _ in range(n_iter):
        v = _l2_normalize(matrix @ u)
        u = _l2_normalize(matrix.T @ v)
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(_l2_normalize(matrix @ u))
    return v @ matrix @ u, u


class SNLayer(nn.Module):
    """A convolution (``kernel_size`` given) or dense layer whose kernel is divided by its
    spectral norm (its ``[fan_in, features]`` matrix's largest singular value) when ``spectral``;
    the power-iteration vector lives in the ``"spectral"`` collection."""
    features: int
    kernel_size: tuple[int, int] | None = None
    strides: int = 1
    spectral: bool = True
    n_iter: int = 1

    @nn.compact
    def __call__(self, x, update_stats: bool = False):
        conv = self.kernel_size is not None
        shape = ((*self.kernel_size, x.shape[-1], self.features) if conv
                 else (x.shape[-1], self.features))
        kernel = self.param("kernel", _conv_init() if conv else _dense_init(), shape)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.spectral:
            u = self.variable(SPECTRAL, "u", lambda: _l2_normalize(
                jax.random.normal(self.make_rng("params"), (self.features,))))
            sigma, u_new = power_iteration(kernel.reshape(-1, self.features), u.value, self.n_iter)
            if update_stats and not self.is_initializing():
                u.value = u_new
            kernel = kernel / sigma
        if not conv:
            return x @ kernel + bias
        s = (self.strides, self.strides)
        return jax.lax.conv_general_dilated(x, kernel, s, "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias


class Discriminator(nn.Module):
    """``images (, y) -> logits [B]``: a 3x3 conv, then ``L`` stride-2 4x4 convs doubling the width,
    leaky ReLU(0.2), a linear head on the flattened features; class-conditional: plus the
    projection ``<embed(y), features>``. ``spectral_norm``: every layer's kernel divided by its
    largest singular value (one power iteration per call with ``update_stats=True``)."""
    ch: int = 64
    levels: int = 2
    num_classes: int = 0
    spectral_norm: bool = True

    @nn.compact
    def __call__(self, x, y=None, update_stats: bool = False):
        sn = dict(spectral=self.spectral_norm)
        h = nn.leaky_relu(SNLayer(self.ch, (3, 3), **sn)(x, update_stats), 0.2)
        width = self.ch
        for _ in range(self.levels):
            width *= 2
            h = nn.leaky_relu(SNLayer(width, (4, 4), 2, **sn)(h, update_stats), 0.2)
        h = h.reshape(h.shape[0], -1)
        out = SNLayer(1, **sn)(h, update_stats)[:, 0]
        if self.num_classes:
            emb = nn.Embed(self.num_classes, h.shape[-1], embedding_init=nn.initializers.normal(0.02),
                           name="projection")(y)
            out = out + jnp.sum(emb * h, axis=-1)
        return out
