"""One component folder of a diffusers pipeline (``unet/``, ``vae/``, ``vqvae/``,
``text_encoder/``, ``transformer/``) -> our flax module and its parameters.

    module = component(folder, "vae")                   # configs only
    params = load_params(module, folder, inputs)        # the safetensors, by name

Each kind lists the ``_class_name``s it reads and its weights file; a config field the module
does not cover is refused by name (``problems()``), before any tensor is read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.autoencoders import AutoencoderConfig, AutoencoderKL, VQModel
from diffusion_jax.models.clip_text import CLIPTextConfig, CLIPTextEncoder
from diffusion_jax.models.dit_transformer import DiTTransformer, DiTTransformerConfig
from diffusion_jax.models.unet2d import UNet2D, UNet2DConfig
from diffusion_jax.models.unet2d_condition import UNet2DCondition, UNet2DConditionConfig
from diffusion_jax.pretrained.convert import PretrainedError, load_tree, rename_deprecated
from diffusion_jax.pretrained.diffusers_folder import read_json, weights_file
from diffusion_jax.utils import safetensors_io

# _class_name -> (config dataclass, module)
CLASSES = {
    "UNet2DModel": (UNet2DConfig, UNet2D),
    "UNet2DConditionModel": (UNet2DConditionConfig, UNet2DCondition),
    "AutoencoderKL": (AutoencoderConfig, AutoencoderKL),
    "VQModel": (AutoencoderConfig, VQModel),
    "CLIPTextModel": (CLIPTextConfig, CLIPTextEncoder),
    "DiTTransformer2DModel": (DiTTransformerConfig, DiTTransformer),
    "Transformer2DModel": (DiTTransformerConfig, DiTTransformer),
}
KINDS = {"unet": ("UNet2DModel", "UNet2DConditionModel"),
         "vae": ("AutoencoderKL",),
         "vqvae": ("VQModel",),
         "text_encoder": ("CLIPTextModel",),
         "transformer": ("DiTTransformer2DModel", "Transformer2DModel")}
TEXT_WEIGHTS = "model.safetensors"


def class_name(folder: Path) -> str:
    raw = read_json(folder / "config.json")
    # transformers writes "architectures": ["CLIPTextModel"], diffusers "_class_name"
    return raw.get("_class_name") or (raw.get("architectures") or [None])[0]


def config_of(folder: Path, kind: str):
    """The component's typed config, checked (a ``PretrainedError`` names what is not covered)."""
    raw = read_json(folder / "config.json")
    name = class_name(folder)
    if name not in KINDS[kind]:
        raise PretrainedError(f"{folder / 'config.json'}: {kind} class {name!r} is not "
                              f"supported; supported: {', '.join(KINDS[kind])}")
    cfg_cls, _ = CLASSES[name]
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields}
    if isinstance(kwargs.get("sample_size"), tuple):
        kwargs["sample_size"] = kwargs["sample_size"][0]
    if name == "Transformer2DModel" and raw.get("norm_type", "layer_norm") != "ada_norm_zero":
        raise PretrainedError(f"{folder / 'config.json'}: a Transformer2DModel with norm_type "
                              f"{raw.get('norm_type')!r}; only DiT's (ada_norm_zero, patched) "
                              "is supported")
    cfg = cfg_cls(**kwargs)
    problems = cfg.problems()
    if problems:
        raise PretrainedError(f"{folder / 'config.json'}: {'; '.join(problems)}")
    return cfg


def component(folder, kind: str) -> nn.Module:
    folder = Path(folder)
    cfg = config_of(folder, kind)
    return CLASSES[class_name(folder)][1](cfg)


def weights_of(folder: Path, kind: str) -> Path:
    if kind == "text_encoder":
        path = folder / TEXT_WEIGHTS
        if not path.is_file():
            if (folder / "pytorch_model.bin").is_file():
                raise PretrainedError(
                    f"{folder / 'pytorch_model.bin'} is a pickle, which this library never "
                    "loads: convert it once where transformers is installed with `python -c "
                    f"\"from transformers import CLIPTextModel; CLIPTextModel.from_pretrained("
                    f"'{folder}').save_pretrained('{folder}', safe_serialization=True)\"`")
            raise PretrainedError(f"{path} is missing (the text encoder's weights)")
        return path
    return weights_file(folder)


def abstract_params(module: nn.Module, *inputs):
    """The boxed parameter shapes (logical axis names kept), nothing computed."""
    return jax.eval_shape(lambda k: module.init({"params": k}, *inputs), jax.random.key(0))["params"]


def load_params(module: nn.Module, folder, kind: str, *inputs) -> dict:
    """The component's float32 parameter tree on the host, checked against ``module``."""
    folder = Path(folder)
    path = weights_of(folder, kind)
    tensors = rename_deprecated(safetensors_io.read(path))
    prefix = "text_model." if kind == "text_encoder" else ""
    return load_tree(tensors, nn.meta.unbox(abstract_params(module, *inputs)), str(path),
                     prefix=prefix, ignore=("position_ids",))


def example_inputs(module: nn.Module, batch: int = 1) -> tuple:
    """Inputs of the right shapes for ``init``/``eval_shape``."""
    cfg = module.config
    if isinstance(module, CLIPTextEncoder):
        return (jnp.zeros((batch, cfg.max_position_embeddings), jnp.int32),)
    if isinstance(module, (AutoencoderKL, VQModel)):
        s = cfg.sample_size
        return (jnp.zeros((batch, s, s, cfg.in_channels)),)
    s, t = cfg.sample_size, jnp.zeros((batch,))
    x = jnp.zeros((batch, s, s, cfg.in_channels))
    if isinstance(module, UNet2DCondition):
        return x, t, jnp.zeros((batch, 1, cfg.cross_attention_dim))
    if isinstance(module, DiTTransformer):
        return x, t, jnp.zeros((batch,), jnp.int32)
    return (x, t) + ((jnp.zeros((batch,), jnp.int32),) if cfg.num_classes else ())
