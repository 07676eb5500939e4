"""A diffusers pipeline folder (``DDPMPipeline.save_pretrained`` / the hub layout) -> network,
preconditioning and process.

    model_index.json                         {"unet": ["diffusers", "UNet2DModel"], ...}
    unet/config.json                         UNet2DModel's constructor arguments
    unet/diffusion_pytorch_model.safetensors
    scheduler/scheduler_config.json          betas, prediction_type, clip_sample, ...
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from diffusion_jax.models.unet2d import UNet2D, UNet2DConfig
from diffusion_jax.pretrained.convert import PretrainedError
from diffusion_jax.pretrained.precond import Consistency, DiscreteSchedule, NetInfo
from diffusion_jax.processes import EDM, DiscreteVP

UNETS = ("UNet2DModel",)
DISCRETE_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DDPMParallelScheduler",
                       "DDIMParallelScheduler", "DPMSolverMultistepScheduler",
                       "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
                       "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                       "HeunDiscreteScheduler", "LMSDiscreteScheduler", "DEISMultistepScheduler",
                       "KDPM2DiscreteScheduler")
SCHEDULERS = DISCRETE_SCHEDULERS + ("CMStochasticIterativeScheduler",)
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                  "squaredcos_cap_v2": "cosine"}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLES = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.pt", "pytorch_model.bin")


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise PretrainedError(f"{path} is missing: a diffusers folder has model_index.json, "
                              "unet/config.json, unet/diffusion_pytorch_model.safetensors and "
                              "scheduler/scheduler_config.json")
    try:
        out = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(out, dict):
        raise PretrainedError(f"{path} holds a {type(out).__name__}, not a JSON object")
    return out


def weights_file(folder: Path) -> Path:
    path = folder / WEIGHTS
    if path.is_file():
        return path
    pickled = [folder / p for p in PICKLES if (folder / p).is_file()]
    if pickled:
        raise PretrainedError(
            f"{pickled[0]} is a pickle, which this library never loads (it can run code): "
            f"convert it once where diffusers is installed with `python -c \"from diffusers "
            f"import UNet2DModel; UNet2DModel.from_pretrained('{folder}').save_pretrained("
            f"'{folder}', safe_serialization=True)\"`")
    raise PretrainedError(f"{path} is missing (the U-Net's weights)")


def unet_config(folder: Path) -> UNet2DConfig:
    raw = read_json(folder / "config.json")
    name = raw.get("_class_name")
    if name not in UNETS:
        raise PretrainedError(f"{folder / 'config.json'}: _class_name {name!r} is not a supported "
                              f"pixel-space U-Net; supported: {', '.join(UNETS)}")
    fields = {f.name for f in dataclasses.fields(UNet2DConfig)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields}
    if isinstance(kwargs.get("sample_size"), tuple):
        kwargs["sample_size"] = kwargs["sample_size"][0]
    cfg = UNet2DConfig(**kwargs)
    problems = cfg.problems()
    if problems:
        raise PretrainedError(f"{folder / 'config.json'}: {'; '.join(problems)}")
    return cfg


def scheduler(path: Path, cfg: UNet2DConfig):
    """``(process, precond)`` from ``scheduler_config.json``."""
    raw = read_json(path)
    name = raw.get("_class_name")
    if name not in SCHEDULERS:
        raise PretrainedError(f"{path}: _class_name {name!r} is not a supported scheduler; "
                              f"supported: {', '.join(SCHEDULERS)}")
    if name == "CMStochasticIterativeScheduler":
        process = EDM(t_min=float(raw.get("sigma_min", 0.002)), t_max=float(raw.get("sigma_max", 80.0)))
        return process, Consistency(process, float(raw.get("sigma_data", 0.5)), process.t_min)
    pred = raw.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise PretrainedError(f"{path}: prediction_type {pred!r} is not supported; supported: "
                              f"{', '.join(PREDICTION_TYPES)}")
    if raw.get("thresholding"):
        raise PretrainedError(f"{path}: thresholding=true (dynamic thresholding) is not "
                              "supported; set it to false to sample without it")
    schedule = raw.get("beta_schedule", "linear")
    if raw.get("trained_betas") is not None or schedule not in BETA_SCHEDULES:
        raise PretrainedError(f"{path}: beta_schedule {schedule!r}"
                              f"{' with trained_betas' if raw.get('trained_betas') else ''} is not "
                              f"supported; supported: {', '.join(BETA_SCHEDULES)}")
    process = DiscreteVP(betas=BETA_SCHEDULES[schedule],
                         num_timesteps=int(raw.get("num_train_timesteps", 1000)),
                         beta_start=float(raw.get("beta_start", 1e-4)),
                         beta_end=float(raw.get("beta_end", 0.02)))
    clip = float(raw.get("clip_sample_range", 1.0)) if raw.get("clip_sample") else None
    return process, DiscreteSchedule(process, pred, clip)


def read(path: Path):
    """``(network, precond, info, process, shape, weights_path)`` of a pixel-space diffusers
    folder (latent pipelines are ``latent_pipeline.read``'s)."""
    index = read_json(path / "model_index.json")
    if "unet" not in index:
        raise PretrainedError(f"{path / 'model_index.json'} names no 'unet' component (it has "
                              f"{', '.join(k for k in index if not k.startswith('_')) or 'none'})")
    cfg = unet_config(path / "unet")
    process, precond = scheduler(path / "scheduler" / "scheduler_config.json", cfg)
    info = NetInfo(num_classes=cfg.num_classes, null_class=False)
    shape = (cfg.sample_size, cfg.sample_size, cfg.in_channels)
    return UNet2D(cfg), precond, info, process, shape, weights_file(path / "unet")
