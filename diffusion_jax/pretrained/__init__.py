"""Pretrained models from local folders: ``dj.load_pretrained(path) -> Pretrained``.

A pretrained model is a model source, not a family: the folder's network becomes our flax
module, its scheduler or preconditioner a process and a ``PretrainedDenoiser``, and the whole a
``Diffusion`` method with the ``x0`` parameterization, so every sampler, guidance wrapper,
learned grid, likelihood, ``eval`` and ``bench-samplers`` run on it unchanged. Two formats:

* a diffusers folder (``model_index.json``, ``unet/``, ``scheduler/``; ``UNet2DModel``), or a
  latent pipeline's (Stable Diffusion 1.x/2.x, DiT, LDM: ``latent_pipeline.py``), whose method
  samples latents and decodes them with the folder's frozen autoencoder;
* an EDM export (``config.json`` with ``"format": "edm"`` and ``model.safetensors``), written by
  ``scripts/export_edm.py`` from NVlabs/edm's pickles.

Only safetensors and JSON are read: no pickle, no code, nothing downloaded.

    pre = dj.load_pretrained("ddpm-cifar10-32")
    x_T = pre.process.prior_sample(key, (16,) + pre.shape)
    x = dj.sample(pre.denoiser, pre.process, x_T, sampler="unipc", num_steps=9)   # NFE 10

    sd = dj.load_pretrained("stable-diffusion-v1-5")
    ctx = sd.encode_prompt(["a photo of a cat"])                      # [1, 77, 768]
    z = dj.sample(lambda x, t: sd.denoiser(x, t, context=ctx), sd.process, z_T, ...)
    images = sd.decode(z)                                             # [1, 512, 512, 3]
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from diffusion_jax.conditioning import Conditioning
from diffusion_jax.losses import LossConfig
from diffusion_jax.methods.diffusion import Diffusion
from diffusion_jax.methods.state import param_shardings
from diffusion_jax.parallel import DEFAULT_RULES, make_mesh
from diffusion_jax.parameterization import X0Prediction
from diffusion_jax.pretrained import diffusers_folder, edm_export, latent_pipeline
from diffusion_jax.pretrained.convert import PretrainedError, load_tree, rename_deprecated
from diffusion_jax.pretrained.latent_pipeline import PretrainedLatent, load_frozen, tokenizer
from diffusion_jax.pretrained.precond import PretrainedDenoiser
from diffusion_jax.processes import Process
from diffusion_jax.utils import safetensors_io

__all__ = ["load_pretrained", "Pretrained", "PretrainedError", "is_pretrained", "read_method",
           "check_pretrained"]

PICKLE_SUFFIXES = (".pkl", ".pt", ".pth", ".bin", ".ckpt")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """``process``; ``denoiser(x, t, labels=None, context=None) -> x0_hat`` (jittable, NHWC, the
    process's time; ``context``: a text encoder's hidden states, for text-to-image U-Nets);
    ``shape`` of one sample the sampler makes (a latent pipeline's: the latent's) and
    ``image_shape`` of one decoded image; ``num_classes``; ``params`` (the denoiser's, sharded
    by the model's logical axes); ``method`` (a ``Diffusion`` method: what the CLI samples
    from). Latent pipelines add ``encode_prompt``, ``encode`` and ``decode``."""
    path: str
    format: str
    method: Diffusion
    params: Any

    @property
    def process(self) -> Process:
        return self.method.process

    @property
    def shape(self) -> tuple[int, ...]:
        return self.method.shape

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.method.sample_shape

    @property
    def num_classes(self) -> int:
        return self.method.model.config.num_classes

    @property
    def latent(self) -> bool:
        return isinstance(self.method, PretrainedLatent)

    @property
    def denoiser(self) -> Callable:
        model, params = self.method.model, self.params
        return lambda x, t, labels=None, context=None: model.apply(
            {"params": params}, x, t, labels, context=context)

    @property
    def num_params(self) -> int:
        return sum(x.size for x in jax.tree_util.tree_leaves(self.params))

    def _latent_only(self, what: str) -> PretrainedLatent:
        if not self.latent:
            raise ValueError(f"{what} is for latent pipelines; {self.path} samples pixels")
        return self.method

    def encode_prompt(self, prompts, quiet: bool = False) -> jax.Array:
        """Prompts -> the U-Net's context ``[len(prompts), 77, D]`` (the text encoder's last
        hidden states; a prompt longer than the window is cut, with a note)."""
        m = self._latent_only("encode_prompt")
        if m.text is None:
            raise ValueError(f"{self.path} has no text encoder (it is "
                             f"{'class-conditional' if self.num_classes else 'unconditional'})")
        return m.condition({"ids": tokenizer(m.tokenizer)(list(prompts), quiet=quiet)})["context"]

    def decode(self, latents) -> jax.Array:
        """The sampler's (scaled) latents -> images NHWC in [-1, 1]."""
        return self._latent_only("decode").decode_samples(jnp.asarray(latents))

    def encode(self, images):
        """Images NHWC in [-1, 1] -> the sampler's latents (posterior mean, scaled)."""
        return self._latent_only("encode").encode_images(jnp.asarray(images))


def is_pretrained(path) -> bool:
    """A folder in one of the two formats (checked by its marker files only)."""
    p = Path(path)
    return (p / "model_index.json").is_file() or edm_export.is_export(p)


def check_pretrained(path) -> None:
    """Refuse, in one line, a path that is not a pretrained folder (configs only)."""
    _read(Path(path))


def _read(path: Path):
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        raise PretrainedError(
            f"{path} is a pickle, which this library never loads (it can run code): export an "
            f"EDM pickle with `python scripts/export_edm.py {path} OUT_DIR` where torch and "
            "NVlabs/edm are importable, then load OUT_DIR")
    if not path.is_dir():
        raise PretrainedError(f"{path} is not a folder: pass a diffusers pipeline folder "
                              "(model_index.json, unet/, scheduler/) or an EDM export folder")
    if (path / "model_index.json").is_file():
        index = diffusers_folder.read_json(path / "model_index.json")
        if latent_pipeline.is_latent(index):
            return "diffusers", *latent_pipeline.read(path, index)
        return "diffusers", diffusers_folder.read(path), None
    if edm_export.is_export(path):
        return "edm", edm_export.read(path), None
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    hint = (f"; {pickles[0]} is a pickle: export it with `python scripts/export_edm.py "
            f"{path / pickles[0]} OUT_DIR`" if pickles else "")
    raise PretrainedError(f"{path} holds neither model_index.json (a diffusers folder) nor "
                          f"config.json with \"format\": \"edm\" (an EDM export){hint}")


def read_method(path) -> tuple[Diffusion, PretrainedDenoiser, Path, str]:
    """The folder's ``Diffusion`` method (cheap: configs only, no tensor read)."""
    path = Path(path)
    fmt, (net, precond, info, process, shape, weights), parts = _read(path)
    model = PretrainedDenoiser(net, precond, info)
    common = dict(conditioning=Conditioning(num_classes=info.num_classes,
                                            context_dim=parts.text.config.hidden_size
                                            if parts and parts.text else 0),
                  null_class=info.null_class, name="pretrained")
    if parts is None:
        method = Diffusion(model, process, X0Prediction(), LossConfig(), optax.identity(), shape,
                           **common)
    else:
        method = PretrainedLatent(
            model, process, X0Prediction(), LossConfig(), optax.identity(), shape, **common,
            guidance=latent_pipeline.DEFAULT_GUIDANCE[parts.pipeline],
            autoencoder=parts.autoencoder, ae_loader=functools.partial(load_frozen, parts),
            scale=parts.scale, shift=parts.shift, pixel_shape=parts.pixel_shape,
            text=parts.text, tokenizer=parts.tokenizer)
    return method, model, weights, fmt


def load_pretrained(path, mesh=None, rules=None) -> Pretrained:
    """Read a local pretrained folder; the parameters are laid out on ``mesh`` (default: every
    device on a ``data`` axis) by the model's logical axis names under ``rules``."""
    method, model, weights, fmt = read_method(path)
    x, t = jnp.zeros((1,) + method.shape), jnp.ones((1,))
    y = jnp.zeros((1,), jnp.int32) if model.config.num_classes else None
    c = method.conditioning.context_dim
    ctx = jnp.zeros((1, 1, c)) if c else None
    boxed = jax.eval_shape(lambda k: model.init({"params": k}, x, t, y, context=ctx),
                           jax.random.key(0))["params"]
    tensors = rename_deprecated(safetensors_io.read(weights))
    containers, prefix, ignore = edm_export.naming() if fmt == "edm" else ((), "", ())
    tree = {"net": load_tree(tensors, nn.meta.unbox(boxed)["net"], str(weights),
                             containers=containers, prefix=prefix, ignore=ignore)}
    mesh = mesh or make_mesh((("data", -1),))
    shardings = param_shardings(boxed, mesh, rules or DEFAULT_RULES)
    params = jax.device_put(tree, shardings)
    return Pretrained(str(path), fmt, method, params)

