"""Latent diffusers pipelines: Stable Diffusion 1.x/2.x (``StableDiffusionPipeline``: CLIP text
encoder + tokenizer, ``UNet2DConditionModel``, ``AutoencoderKL``), DiT (``DiTPipeline``:
``DiTTransformer2DModel`` + ``AutoencoderKL``) and LDM (``LDMPipeline``: ``UNet2DModel`` +
``VQModel``), as a ``PretrainedLatent`` method: diffusion on the scaled latents, decoded to
pixels, with the text encoder and the autoencoder frozen beside the denoiser.

    model_index.json       {"unet": [...], "vae": [...], "text_encoder": [...], "tokenizer": [...]}
    unet/ | transformer/   the denoiser (config.json + diffusion_pytorch_model.safetensors)
    vae/ | vqvae/          the autoencoder; ``scaling_factor`` (and ``shift_factor``)
    text_encoder/          CLIPTextModel (config.json + model.safetensors)
    tokenizer/             vocab.json + merges.txt (+ special_tokens_map / tokenizer_config)
    scheduler/             the training schedule and prediction type

The sampler's latents are the pipeline's: ``z = scaling_factor * (vae_latent - shift_factor)``;
``decode`` undoes that and returns NHWC images in [-1, 1]. Prompts become token ids on the host
while the request is planned; the text encoder runs once per chunk, before the sampler's scan,
and classifier-free guidance sends the prompt and the negative (or empty) prompt through one
batched network call.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.methods.diffusion import Diffusion
from diffusion_jax.methods.latent import LatentDiffusion
from diffusion_jax.models.autoencoders import AutoencoderKL, VQModel
from diffusion_jax.pretrained import components
from diffusion_jax.pretrained.convert import PretrainedError
from diffusion_jax.pretrained.diffusers_folder import scheduler
from diffusion_jax.pretrained.precond import NetInfo
from diffusion_jax.pretrained.tokenizer import FILES as TOKENIZER_FILES
from diffusion_jax.pretrained.tokenizer import CLIPTokenizer

PIPELINES = ("StableDiffusionPipeline", "DiTPipeline", "LDMPipeline")
# the guidance scale of a request that names none (diffusers' pipelines' defaults)
DEFAULT_GUIDANCE = {"StableDiffusionPipeline": 7.5, "DiTPipeline": None, "LDMPipeline": None}


@dataclasses.dataclass(frozen=True)
class LatentParts:
    """What a latent folder adds to its denoiser: the frozen autoencoder (and text encoder),
    where their weights are, and how latents are scaled."""
    pipeline: str
    autoencoder: nn.Module
    ae_folder: str
    ae_kind: str                      # "vae" | "vqvae"
    scale: float
    shift: float
    pixel_shape: tuple[int, ...]
    text: nn.Module | None = None
    text_folder: str | None = None
    tokenizer: str | None = None      # the tokenizer folder


def is_latent(index: dict) -> bool:
    return any(k in index for k in ("vae", "vqvae", "text_encoder", "transformer"))


def read(path: Path, index: dict):
    """``((network, precond, info, process, latent_shape, weights), LatentParts)``: configs only."""
    name = index.get("_class_name")
    where = path / "model_index.json"
    if name not in PIPELINES:
        raise PretrainedError(f"{where}: pipeline {name!r} is not supported; latent pipelines "
                              f"that load: {', '.join(PIPELINES)}")
    net_kind = "transformer" if name == "DiTPipeline" else "unet"
    ae_kind = "vqvae" if name == "LDMPipeline" else "vae"
    for kind in (net_kind, ae_kind, "scheduler") + (
            ("text_encoder", "tokenizer") if name == "StableDiffusionPipeline" else ()):
        if kind not in index or not (path / kind).is_dir():
            raise PretrainedError(f"{path / kind} is missing: a {name} folder has {net_kind}/, "
                                  f"{ae_kind}/, scheduler/"
                                  + (", text_encoder/ and tokenizer/" if ae_kind == "vae" and
                                     name != "DiTPipeline" else ""))
    net = components.component(path / net_kind, net_kind)
    ae = components.component(path / ae_kind, ae_kind)
    cfg, ae_cfg = net.config, ae.config
    process, precond = scheduler(path / "scheduler" / "scheduler_config.json", cfg)
    if cfg.in_channels != ae_cfg.latent_channels:
        raise PretrainedError(f"{path / net_kind / 'config.json'}: in_channels={cfg.in_channels} "
                              f"but the autoencoder's latent_channels={ae_cfg.latent_channels}")
    text = tokenizer = None
    if name == "StableDiffusionPipeline":
        text = components.component(path / "text_encoder", "text_encoder")
        if text.config.hidden_size != cfg.cross_attention_dim:
            raise PretrainedError(
                f"{path / 'text_encoder' / 'config.json'}: hidden_size={text.config.hidden_size} "
                f"but the U-Net's cross_attention_dim={cfg.cross_attention_dim}: the text "
                "encoder does not belong to this U-Net")
        missing = [f for f in TOKENIZER_FILES if not (path / "tokenizer" / f).is_file()]
        if missing:
            raise PretrainedError(f"{path / 'tokenizer' / missing[0]} is missing: the tokenizer "
                                  f"needs {' and '.join(TOKENIZER_FILES)}")
        tokenizer = str(path / "tokenizer")
    num_classes = cfg.num_classes if name == "DiTPipeline" else 0
    info = NetInfo(num_classes=num_classes, null_class=bool(num_classes))
    s = cfg.sample_size
    shape = (s, s, cfg.in_channels)
    pixel = (s * ae_cfg.factor, s * ae_cfg.factor, ae_cfg.out_channels)
    parts = LatentParts(name, ae, str(path / ae_kind), ae_kind, float(ae_cfg.scaling_factor),
                        float(ae_cfg.shift_factor or 0.0), pixel, text,
                        str(path / "text_encoder") if text is not None else None, tokenizer)
    return (net, precond, info, process, shape, components.weights_of(path / net_kind, net_kind)), parts


def load_frozen(parts: LatentParts) -> dict:
    """The autoencoder's (and text encoder's) parameters, host arrays."""
    out = {"autoencoder": components.load_params(
        parts.autoencoder, parts.ae_folder, parts.ae_kind,
        *components.example_inputs(parts.autoencoder))}
    if parts.text is not None:
        out["text"] = components.load_params(parts.text, parts.text_folder, "text_encoder",
                                             *components.example_inputs(parts.text))
    return out


@functools.lru_cache(maxsize=8)
def tokenizer(folder: str) -> CLIPTokenizer:
    return CLIPTokenizer.from_folder(folder)


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainedLatent(LatentDiffusion):
    """A latent pipeline folder as a method: ``LatentDiffusion`` with a diffusers autoencoder
    (``ae_loader() -> {"autoencoder": ..., "text": ...}``), ``shift``, and for text-to-image a
    frozen text encoder and tokenizer (``text``, ``tokenizer``; ``guidance`` is the scale a
    prompt gets when the request names none)."""
    shift: float = 0.0
    text: nn.Module | None = None
    tokenizer: str | None = None
    caption_drop: float = 0.0   # fine-tuning: captions dropped to the empty prompt (for CFG)
    preview_prompts: tuple = ()  # fine-tuning: the training previews' prompts
    name: str = "pretrained"

    @property
    def takes_prompts(self) -> bool:
        return self.text is not None

    @property
    def example_fields(self) -> tuple:
        return ("caption",) if self.text is not None else ()

    @property
    def sample_options(self) -> frozenset:
        base = {"sampler", "steps", "grid", "guidance", "init_image", "mask", "resample",
                "strength", "invert", "cache_every"}
        return frozenset(base | ({"prompts", "negative_prompt"} if self.text is not None else
                                 {"labels"} if self.conditioning.num_classes else set()))

    # -- the frozen parts ----------------------------------------------------------------------
    def _ae_abstract(self):
        out = {"autoencoder": components.abstract_params(
            self.autoencoder, *components.example_inputs(self.autoencoder))}
        if self.text is not None:
            out["text"] = components.abstract_params(self.text,
                                                     *components.example_inputs(self.text))
        return out

    def encode(self, frozen, images):
        """Images NHWC in [-1, 1] -> the sampler's latents (the posterior mean, scaled)."""
        ae = frozen["autoencoder"]
        if isinstance(self.autoencoder, VQModel):
            z = self.autoencoder.apply({"params": ae}, images, method=VQModel.encode)
        else:
            z = self.autoencoder.apply({"params": ae}, images, method=AutoencoderKL.encode)[0]
        return (z - self.shift) * self.scale

    def decode(self, frozen, latents):
        """The sampler's latents -> images NHWC in [-1, 1] (not clipped)."""
        ae = frozen["autoencoder"]
        z = latents / self.scale + self.shift
        cls = VQModel if isinstance(self.autoencoder, VQModel) else AutoencoderKL
        return self.autoencoder.apply({"params": ae}, z, method=cls.decode)

    def encode_text(self, frozen, ids):
        """Token ids ``[B, L]`` -> the U-Net's context ``[B, L, D]``."""
        return self.text.apply({"params": frozen["text"]}, ids)

    def prompt_ids(self, prompts, negative: str | None, n: int) -> dict:
        """``{"ids", "null_ids"}`` for ``n`` samples: one prompt for all, or one per sample."""
        if self.text is None:
            raise ValueError("--prompt needs a text-to-image pipeline (a folder with a text "
                             "encoder); this one is "
                             + ("class-conditional: use --labels" if self.conditioning.num_classes
                                else "unconditional"))
        prompts = list(prompts)
        if len(prompts) not in (1, n):
            raise ValueError(f"{len(prompts)} prompts but --num {n}: give one prompt for every "
                             f"sample, or --num {len(prompts)}")
        tok = tokenizer(self.tokenizer)
        ids = np.resize(tok(prompts), (n, tok.max_length))
        null = np.resize(tok([negative or ""]), (n, tok.max_length))
        return {"ids": ids, "null_ids": null}

    # -- fine-tuning: captions -> ids on the host, ids -> context in the step -------------------
    def host_batch(self, batch: dict) -> dict:
        """``caption`` strings -> ``ids`` and the empty prompt's ``null_ids`` (``[b, L]``)."""
        out = LatentDiffusion.host_batch(self, batch)
        if self.text is not None:
            tok = tokenizer(self.tokenizer)
            captions = [str(c) for c in batch["caption"]]
            out["ids"] = tok(captions, quiet=True)
            out["null_ids"] = np.repeat(tok([""], quiet=True), len(captions), axis=0)
        return out

    def train_step(self, state, batch: dict, key: jax.Array):
        """``LatentDiffusion``'s step (images encoded by the frozen autoencoder); a
        text-to-image model's captions go through the frozen text encoder first, each replaced
        by the empty prompt with probability ``caption_drop``."""
        if self.text is not None:
            k = jax.random.fold_in(jax.random.fold_in(key, state.step), 0x7E47)
            ids = batch["ids"]
            drop = jax.random.bernoulli(k, self.caption_drop, (ids.shape[0],))
            ids = jnp.where(drop[:, None], batch["null_ids"], ids)
            ctx = jax.lax.stop_gradient(self.encode_text(state.autoencoder, ids))
            batch = {k: v for k, v in batch.items() if k not in ("ids", "null_ids")}
            batch["context"] = ctx
        return LatentDiffusion.train_step(self, state, batch, key)

    def preview(self, params, key, n: int, test_images):
        """Text-to-image: one sample per preview prompt (``sample.prompts``, cycled to ``n``;
        none: the empty prompt, unguided); labels and unconditional as ``Diffusion``."""
        if self.text is None:
            return Diffusion.preview(self, params, key, n, test_images)
        prompts = self.preview_prompts or ("",)
        cond = self.prompt_ids(prompts if len(prompts) in (1, n) else
                               [prompts[i % len(prompts)] for i in range(n)], None, n)
        guidance = self.guidance if self.preview_prompts else None
        fn = self.sample_fn(guidance_scale=guidance)
        x_T = self.process.prior_sample(key, (n,) + self.shape)
        return np.asarray(fn(params, x_T, key, cond)), None

    # -- sampling: ids -> context once per chunk, latents -> pixels ------------------------------
    def sample_fn(self, sampler: str | None = None, num_steps: int | None = None,
                  grid: str | None = None, guidance_scale: float | None = None,
                  classifier: tuple | None = None, cache_every: int = 1) -> Callable:
        inner = Diffusion.sample_fn(self, sampler, num_steps, grid, guidance_scale, classifier,
                                    cache_every)

        def fn(params, x_T, key, cond=None, known=None, mask=None):
            if known is not None:
                raise ValueError("inpainting edits pixels; this model samples latents")
            return self.decode_samples(inner(params, x_T, key, self.condition(cond)))

        return fn

    def condition(self, cond: dict | None) -> dict | None:
        """Token ids -> the text encoder's contexts (jitted, once per chunk, before the scan)."""
        if not cond or "ids" not in cond:
            return cond
        return _text_context(self)(self.ae_params(), cond)

    def text_context(self, frozen, cond: dict) -> dict:
        """``ids``/``null_ids`` -> ``context``/``null_context`` (the rest of ``cond`` kept)."""
        out = {k: v for k, v in cond.items() if k not in ("ids", "null_ids")}
        out["context"] = self.encode_text(frozen, cond["ids"])
        if "null_ids" in cond:
            out["null_context"] = self.encode_text(frozen, cond["null_ids"])
        return out


@functools.lru_cache(maxsize=8)
def _text_context(method: PretrainedLatent):
    return jax.jit(method.text_context)
