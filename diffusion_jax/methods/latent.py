"""Latent diffusion (Rombach et al. 2022): diffusion on the scaled latents of a frozen autoencoder
(the VAE method's spatial-latent autoencoder, from its own workdir); samples are decoded to
pixels.

    method = LatentDiffusion(..., autoencoder=vae_model, ae_loader=load, scale=1 / latent_std)

Training encodes each batch on the fly inside the jitted step (the posterior mean, times
``scale``) with the autoencoder's parameters held frozen in the train state; sampling decodes
with the same parameters. ``scale`` makes the latents unit-variance on the training data.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffusion_jax.data.sources import first_images, get_source
from diffusion_jax.methods import diffusion
from diffusion_jax.methods.diffusion import Diffusion
from diffusion_jax.methods.state import TrainState, param_shardings, with_shardings
from diffusion_jax.models.vae import VAE
from diffusion_jax.settings import BuildContext, ConfigError, DataSpec, StoredRun


@flax.struct.dataclass
class LatentState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    autoencoder: Any  # frozen


@dataclasses.dataclass(frozen=True, eq=False)
class LatentDiffusion(Diffusion):
    """``shape`` is the latent's; ``pixel_shape`` the images'. ``ae_loader() -> params`` reads the
    autoencoder's (EMA) parameters on the host."""
    autoencoder: VAE | None = None
    ae_loader: Callable | None = None
    scale: float = 1.0
    pixel_shape: tuple[int, ...] = ()
    name: str = "latent_diffusion"
    sample_options = frozenset({"sampler", "steps", "grid", "labels", "guidance", "init_image",
                                "mask", "resample", "strength", "invert", "cache_every"})
    likelihood = None
    no_likelihood = ("this is a latent diffusion model: the PF-ODE gives the density of latents, "
                     "not of pixels, so it has no bits/dim of the images")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.pixel_shape)

    # -- state -------------------------------------------------------------------------------
    def _ae_abstract(self):
        x = jnp.zeros((1,) + self.pixel_shape)
        eps = jnp.zeros((1,) + self.autoencoder.latent_shape)
        return jax.eval_shape(lambda: self.autoencoder.init(jax.random.key(0), x, eps)["params"])

    def abstract_state(self, mesh: Mesh, rules):
        abstract, sh = super().abstract_state(mesh, rules)
        boxed = self._ae_abstract()
        ae_sh = param_shardings(boxed, mesh, rules)
        ae_abs = with_shardings(boxed, ae_sh)
        return (LatentState(abstract.step, abstract.params, abstract.ema_params,
                            abstract.opt_state, ae_abs),
                LatentState(sh.step, sh.params, sh.ema_params, sh.opt_state, ae_sh))

    def init(self, key) -> LatentState:
        st = super().init(key)
        shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                        flax.linen.meta.unbox(self._ae_abstract()))
        ae = jax.pure_callback(lambda: jax.device_get(self.ae_params()), shapes)
        return LatentState(st.step, st.params, st.ema_params, st.opt_state, ae)

    def ae_params(self):
        """The frozen autoencoder's parameters (read once per process)."""
        return _load(self.ae_loader)

    # -- training ----------------------------------------------------------------------------
    def encode(self, ae_params, images):
        mu, _ = self.autoencoder.apply({"params": ae_params}, images, method=VAE.encode)
        return mu * self.scale

    def decode(self, ae_params, latents):
        mean, _ = self.autoencoder.apply({"params": ae_params}, latents / self.scale,
                                         method=VAE.decode)
        return mean

    def train_step(self, state: LatentState, batch: dict, key: jax.Array):
        z = jax.lax.stop_gradient(self.encode(state.autoencoder, batch["image"]))
        inner = TrainState(state.step, state.params, state.ema_params, state.opt_state)
        new, metrics = super().train_step(inner, {**batch, "image": z}, key)
        return LatentState(new.step, new.params, new.ema_params, new.opt_state,
                           state.autoencoder), metrics

    # -- sampling: latents -> pixels ---------------------------------------------------------
    def encode_images(self, images):
        return np.asarray(_encoder(self)(self.ae_params(), jnp.asarray(images)))

    def decode_samples(self, x):
        return _decoder(self)(self.ae_params(), x)

    def sample_fn(self, *args, **kwargs) -> Callable:
        inner = super().sample_fn(*args, **kwargs)
        decode = _decoder(self)
        ae = self.ae_params()

        def fn(params, x_T, key, cond=None, known=None, mask=None):
            if known is not None:
                raise ValueError("inpainting edits pixels; this model samples latents")
            return decode(ae, inner(params, x_T, key, cond))

        return fn


@functools.lru_cache(maxsize=4)
def _load(loader):
    return jax.device_get(loader())


@functools.lru_cache(maxsize=4)
def _decoder(method: LatentDiffusion):
    return jax.jit(method.decode)


@functools.lru_cache(maxsize=4)
def _encoder(method: LatentDiffusion):
    return jax.jit(method.encode)


# -- settings and build ------------------------------------------------------------------------

LATENT_SCALE_IMAGES = 2048


def build(ctx: BuildContext) -> LatentDiffusion:
    """Diffusion on the latents of the ``latent.autoencoder`` VAE workdir."""
    latent = ctx.section("latent")
    unknown = set(latent) - {"autoencoder", "scale"}
    if unknown:
        raise ConfigError(f"unknown config key latent.{sorted(unknown)[0]} (valid: autoencoder, "
                          "scale)")
    ae = _autoencoder(ctx, latent.get("autoencoder", ""))
    latent_shape = ae.experiment.method.model.latent_shape
    data = dataclasses.replace(ctx.data, image_size=latent_shape[0], channels=latent_shape[-1])
    model, cond = diffusion.denoiser_network(ctx.section("model"), data)
    if cond.low_res_size or cond.context_dim:
        raise ConfigError("latent diffusion supports class conditioning only (no low_res_size "
                          "or context_dim)")
    scale = float(latent.get("scale", 0.0)) or latent_scale(ae, ctx.data)
    return diffusion.build(ctx, data, LatentDiffusion, autoencoder=ae.experiment.method.model,
                           ae_loader=ae.load_params, scale=scale, pixel_shape=ctx.data.shape)


def _autoencoder(ctx: BuildContext, path: str) -> StoredRun:
    """The autoencoder workdir, checked against this experiment's data."""
    ae = ctx.stored(path, "latent.autoencoder")
    exp = ae.experiment
    if exp.method_name != "vae":
        raise ConfigError(f"latent.autoencoder={path!r} holds a {exp.method_name!r} run; it "
                          "must be a VAE (experiments/fashion_mnist_vae.py with "
                          "--config.model.latent_dim=0)")
    if exp.method.model.latent_dim:
        raise ConfigError(f"latent.autoencoder={path!r} has a flat {exp.method.model.latent_dim}"
                          "-d latent; latent diffusion needs a spatial one (model.latent_dim=0)")
    if exp.data.shape != ctx.data.shape:
        raise ConfigError(f"latent.autoencoder={path!r} was trained on images of shape "
                          f"{exp.data.shape}; this experiment's data has shape {ctx.data.shape}")
    return ae


_SCALES: dict = {}  # (workdir, autoencoder, data) -> scale: measured once per process


def _scale_of(path: str, ae_model, data: DataSpec, load_params) -> float:
    if (path, ae_model, data) in _SCALES:
        return _SCALES[path, ae_model, data]
    params = load_params()
    src = get_source(data.dataset, "train", data.data_dir or None)
    n = min(LATENT_SCALE_IMAGES, len(src))
    x = first_images(src, n, data.shape)
    enc = jax.jit(lambda p, x: ae_model.apply({"params": p}, x, method=VAE.encode)[0])
    z = np.concatenate([np.asarray(enc(params, x[i: i + 256])) for i in range(0, n, 256)])
    scale = float(1.0 / z.std())
    print(f"latent scale {scale:.4f} (1/std of {n} training latents of {path})")
    _SCALES[path, ae_model, data] = scale
    return scale


def latent_scale(ae: StoredRun, data: DataSpec) -> float:
    """``1 / std`` of the autoencoder's posterior means over the first ``LATENT_SCALE_IMAGES``
    training images: the factor that makes the latents unit-variance (Rombach et al. 2022)."""
    return _scale_of(ae.path, ae.experiment.method.model, data, ae.load_params)
