"""GANs as a method: a generator and a discriminator, each with its own optimizer and learning
rate (TTUR), ``n_critic`` discriminator updates per generator update inside the one jitted step,
an EMA of the generator, spectral normalisation's state in the train state, and the losses the
course covers: non-saturating (Goodfellow et al. 2014), hinge (Lim & Ye 2017; Miyato et al. 2018)
and WGAN-GP (Gulrajani et al. 2017), with an optional R1 penalty (Mescheder et al. 2018).

    method = GAN(generator, discriminator, g_tx, d_tx, shape=(28, 28, 1), loss="hinge")

Each discriminator update sees the step's real batch and fresh fakes; the generator update draws
its own latents. Metrics: ``d_real``/``d_fake`` (mean logits), ``penalty``, ``d_loss``,
``g_loss``; ``loss`` is the discriminator's (what the loop's NaN check reads).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from diffusion_jax.methods.base import MethodBase, slerp_rows
from diffusion_jax.methods.ema import ema_update
from diffusion_jax.methods.state import (opt_shardings, param_shardings, replicated,
                                         with_shardings)
from diffusion_jax.models.gan import SPECTRAL, Discriminator, Generator, check_gan_size
from diffusion_jax.settings import BuildContext, ConfigError

GAN_LOSSES = ("non_saturating", "hinge", "wgan_gp")
SECTIONS = ("gan",)


@flax.struct.dataclass
class GANState:
    """``params``/``ema_params``: the generator's (so the workdir reader finds the sampling
    parameters where it finds every method's); ``d_params``/``spectral``: the discriminator's
    weights and its spectral-norm power-iteration vectors."""
    step: jax.Array
    params: Any
    ema_params: Any
    d_params: Any
    spectral: Any
    g_opt: Any
    d_opt: Any


def d_loss_terms(loss: str, real_logits, fake_logits):
    """The discriminator's loss (before penalties) from its logits on real and fake images."""
    if loss == "non_saturating":  # -log D(x) - log(1 - D(G(z)))
        return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
    if loss == "hinge":
        return jnp.mean(nn.relu(1.0 - real_logits)) + jnp.mean(nn.relu(1.0 + fake_logits))
    return jnp.mean(fake_logits) - jnp.mean(real_logits)  # WGAN critic


def g_loss_terms(loss: str, fake_logits):
    """The generator's loss: non-saturating ``-log D(G(z))``; hinge and WGAN ``-D(G(z))``."""
    if loss == "non_saturating":
        return jnp.mean(jax.nn.softplus(-fake_logits))
    return -jnp.mean(fake_logits)


def gradient_penalty(critic, real, fake, key):
    """WGAN-GP: ``mean((||grad_x critic(x_hat)||_2 - 1)^2)`` on ``x_hat = eps real + (1-eps) fake``,
    ``eps ~ U[0, 1]`` per example."""
    eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1))
    x_hat = eps * real + (1.0 - eps) * fake
    g = jax.grad(lambda x: jnp.sum(critic(x)))(x_hat)
    norm = jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=-1) + 1e-12)
    return jnp.mean((norm - 1.0) ** 2)


def r1_penalty(critic, real):
    """R1: ``mean(||grad_x critic(x)||^2)`` on real images (multiply by gamma/2)."""
    g = jax.grad(lambda x: jnp.sum(critic(x)))(real)
    return jnp.mean(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=-1))


@dataclasses.dataclass(frozen=True, eq=False)
class GAN(MethodBase):
    """``gp_weight``: WGAN-GP's lambda (the penalty is used when ``loss="wgan_gp"``);
    ``r1_gamma`` > 0: add ``gamma/2 * R1`` to the discriminator's loss (any loss)."""
    generator: Generator
    discriminator: Discriminator
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    shape: tuple[int, ...]
    z_dim: int = 128
    loss: str = "hinge"
    n_critic: int = 1
    gp_weight: float = 10.0
    r1_gamma: float = 0.0
    ema_decay: float = 0.999
    ema_start: int = 0
    name: str = "gan"
    sample_options = frozenset({"labels", "interpolate"})
    no_likelihood = "a GAN has no likelihood"

    @property
    def num_classes(self) -> int:
        return self.generator.num_classes

    # -- state -------------------------------------------------------------------------------
    def _init(self, key):
        kg, kd = jax.random.split(key)
        z = jnp.zeros((1, self.z_dim))
        y = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        g = self.generator.init({"params": kg}, z, y)["params"]
        d_vars = self.discriminator.init({"params": kd}, jnp.zeros((1,) + self.shape), y)
        d = d_vars["params"]
        spectral = d_vars.get(SPECTRAL, {})
        g_u, d_u = nn.meta.unbox(g), nn.meta.unbox(d)
        state = GANState(jnp.zeros((), jnp.int32), g, g, d, spectral, self.g_tx.init(g_u),
                         self.d_tx.init(d_u))
        return state

    def abstract_state(self, mesh: Mesh, rules):
        abstract = jax.eval_shape(self._init, jax.random.key(0))
        g_sh = param_shardings(abstract.params, mesh, rules)
        d_sh = param_shardings(abstract.d_params, mesh, rules)
        rep = replicated(mesh)
        shardings = GANState(rep, g_sh, g_sh, d_sh,
                             jax.tree_util.tree_map(lambda _: rep, abstract.spectral),
                             opt_shardings(self.g_tx, abstract.g_opt, g_sh, rep),
                             opt_shardings(self.d_tx, abstract.d_opt, d_sh, rep))
        return with_shardings(abstract, shardings), shardings

    def init(self, key) -> GANState:
        return nn.meta.unbox(self._init(key))

    def sample_params(self, state: GANState):
        return state.ema_params

    # -- the networks ------------------------------------------------------------------------
    def generate(self, g_params, z, y=None):
        return self.generator.apply({"params": g_params}, z, y)

    def critic(self, d_params, spectral, x, y=None, update_stats: bool = False):
        """``(logits, spectral)``; with ``update_stats`` the power iteration advances one step."""
        variables = {"params": d_params, SPECTRAL: spectral}
        if update_stats and spectral:
            out, upd = self.discriminator.apply(variables, x, y, update_stats=True,
                                                mutable=[SPECTRAL])
            return out, upd[SPECTRAL]
        return self.discriminator.apply(variables, x, y, update_stats=False), spectral

    def _fake_labels(self, key, n):
        return jax.random.randint(key, (n,), 0, self.num_classes) if self.num_classes else None

    # -- training ----------------------------------------------------------------------------
    def train_step(self, state: GANState, batch: dict, key: jax.Array):
        """Pure; ``n_critic`` discriminator updates then one generator update; all randomness
        from ``fold_in(key, step)``, so a resumed run repeats the uninterrupted one."""
        key = jax.random.fold_in(key, state.step)
        real = batch["image"]
        y_real = batch["label"] if self.num_classes else None
        n = real.shape[0]

        def d_update(carry, i):
            d_params, spectral, d_opt = carry
            kz, ky, kp = jax.random.split(jax.random.fold_in(key, i), 3)
            y_fake = self._fake_labels(ky, n)
            fake = self.generate(state.params, jax.random.normal(kz, (n, self.z_dim)), y_fake)

            def loss_fn(dp):
                real_logits, new_spec = self.critic(dp, spectral, real, y_real, update_stats=True)
                fake_logits, _ = self.critic(dp, new_spec, fake, y_fake)
                loss = d_loss_terms(self.loss, real_logits, fake_logits)
                penalty = jnp.zeros(())
                if self.loss == "wgan_gp":
                    critic = lambda x: self.critic(dp, new_spec, x, y_real)[0]
                    penalty = self.gp_weight * gradient_penalty(critic, real, fake, kp)
                if self.r1_gamma:
                    critic = lambda x: self.critic(dp, new_spec, x, y_real)[0]
                    penalty = penalty + 0.5 * self.r1_gamma * r1_penalty(critic, real)
                aux = (new_spec, jnp.mean(real_logits), jnp.mean(fake_logits), penalty, loss)
                return loss + penalty, aux

            (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
            new_spec, d_real, d_fake, penalty, _ = aux
            updates, d_opt = self.d_tx.update(grads, d_opt, d_params)
            d_params = optax.apply_updates(d_params, updates)
            m = {"d_loss": total, "d_real": d_real, "d_fake": d_fake, "penalty": penalty,
                 "d_grad_norm": optax.tree.norm(grads)}
            return (d_params, new_spec, d_opt), m

        # Unrolled (n_critic is small): XLA:CPU runs the convolutions of a scan body ~20x slower
        carry = (state.d_params, state.spectral, state.d_opt)
        for i in range(self.n_critic):
            carry, dm = d_update(carry, i)  # dm: the last critic update's figures
        d_params, spectral, d_opt = carry

        kz, ky = jax.random.split(jax.random.fold_in(key, self.n_critic))
        y_fake = self._fake_labels(ky, n)
        z = jax.random.normal(kz, (n, self.z_dim))

        def g_loss_fn(gp):
            logits, _ = self.critic(d_params, spectral, self.generate(gp, z, y_fake), y_fake)
            return g_loss_terms(self.loss, logits)

        g_loss, g_grads = jax.value_and_grad(g_loss_fn)(state.params)
        updates, g_opt = self.g_tx.update(g_grads, state.g_opt, state.params)
        g_params = optax.apply_updates(state.params, updates)
        decay = jnp.where(state.step < self.ema_start, 0.0, self.ema_decay)
        ema = ema_update(state.ema_params, g_params, decay)
        metrics = {"loss": dm["d_loss"], "g_loss": g_loss,
                   "g_grad_norm": optax.tree.norm(g_grads), **dm}
        return GANState(state.step + 1, g_params, ema, d_params, spectral, g_opt, d_opt), metrics

    # -- sampling ----------------------------------------------------------------------------
    def default_labels(self, n: int):
        return jnp.arange(n) % self.num_classes if self.num_classes else None

    def sample(self, params, key, n: int, cond: dict | None = None):
        """``n`` images from ``z ~ N(0, I)`` (class-balanced labels for a conditional GAN unless
        ``cond={"y": labels}``): one generator evaluation."""
        y = (cond or {}).get("y", self.default_labels(n))
        return _generate(self.generator, params, jax.random.normal(key, (n, self.z_dim)),
                         None if not self.num_classes else jnp.asarray(y))

    def sample_from(self, params, z, y=None):
        """Images of given latents ``z [n, z_dim]`` (and labels)."""
        return _generate(self.generator, params, z, None if not self.num_classes else y)

    def preview(self, params, key, n: int, test_images):
        nrow = None
        cond = None
        if self.num_classes:
            per = max(n // self.num_classes, 1)
            n, nrow = per * self.num_classes, per
            cond = {"y": jnp.repeat(jnp.arange(self.num_classes), per)}
        return np.asarray(self.sample(params, key, n, cond)), nrow

    def interpolate(self, params, key, rows: int, steps: int, test_images, labels):
        """``rows x steps`` images along slerp paths between random latents."""
        ka, kb = jax.random.split(key)
        za, zb = (jax.random.normal(k, (rows, self.z_dim)) for k in (ka, kb))
        y = None if labels is None else jnp.repeat(jnp.asarray(labels), steps)
        return self.sample_from(params, slerp_rows(za, zb, steps), y)


@functools.lru_cache(maxsize=16)
def _jitted(generator):
    """One compiled generator per module (flax modules are hashable dataclasses)."""
    return jax.jit(lambda p, z, y: generator.apply({"params": p}, z, y))


def _generate(generator, params, z, y):
    return _jitted(generator)(params, z, y)


# -- settings and build ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GANSpec:
    loss: str = "hinge"          # non_saturating | hinge | wgan_gp
    n_critic: int = 1            # discriminator updates per generator update
    gp_weight: float = 10.0      # WGAN-GP's lambda
    r1_gamma: float = 0.0        # > 0: R1 penalty gamma/2 * E||grad D(x)||^2 on real images
    d_lr: float = 0.0            # the discriminator's learning rate (TTUR); 0: optimizer.lr
    z_dim: int = 128


@dataclasses.dataclass(frozen=True)
class GANModelSpec:
    ch: int = 64                 # the generator's width at full resolution
    d_ch: int = 64               # the discriminator's
    levels: int = 2              # stride-2 stages
    spectral_norm: bool = True   # on every discriminator layer
    conditional: bool = False    # class-conditional (projection discriminator)


def build(ctx: BuildContext) -> GAN:
    data, train = ctx.data, ctx.train
    if data.dim:
        raise ConfigError("the GAN is for images; data.dim is set (vector data)")
    g = ctx.typed(GANSpec, "gan")
    if g.loss not in GAN_LOSSES:
        raise ConfigError(f"unknown gan.loss={g.loss!r}; valid: {', '.join(GAN_LOSSES)}")
    if g.n_critic < 1:
        raise ConfigError(f"gan.n_critic={g.n_critic} must be >= 1")
    m = ctx.typed(GANModelSpec, "model", required=True)
    try:
        check_gan_size(data.image_size, m.levels)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if m.conditional and not data.num_classes:
        raise ConfigError("model.conditional=True needs data.num_classes > 0")
    k = data.num_classes if m.conditional else 0
    gen = Generator(data.image_size, data.channels, m.ch, m.levels, k)
    disc = Discriminator(m.d_ch, m.levels, k, m.spectral_norm)
    return GAN(gen, disc, ctx.tx, ctx.make_tx(g.d_lr or None), data.shape, g.z_dim, g.loss,
               g.n_critic, g.gp_weight, g.r1_gamma, train.ema_decay, train.ema_start)
