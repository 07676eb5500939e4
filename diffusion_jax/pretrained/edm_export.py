"""An EDM export folder (written by ``scripts/export_edm.py`` from NVlabs/edm's pickles) ->
network, preconditioning and process.

    config.json        {"format": "edm", "precond": "EDMPrecond", "model_type": "SongUNet",
                        "kwargs": {every constructor argument of the precond}}
    model.safetensors  the precond module's state_dict() in float32, keys unchanged
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from diffusion_jax.models.edm_unets import EDM_NETWORKS, EDMNetConfig, edm_config
from diffusion_jax.pretrained.convert import PretrainedError
from diffusion_jax.pretrained.diffusers_folder import read_json
from diffusion_jax.pretrained.precond import EDMPreconds, NetInfo, ve_for_edm, vp_for_edm
from diffusion_jax.processes import EDM, DiscreteVP

PRECONDS = ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond")
WEIGHTS = "model.safetensors"
# precond arguments that are not the network's
PRECOND_ARGS = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min",
                "sigma_max", "sigma_data", "beta_d", "beta_min", "M", "epsilon_t", "C_1", "C_2",
                "model_type")


def is_export(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return read_json(cfg).get("format") == "edm"
    except PretrainedError:
        return False


def naming() -> tuple[tuple[str, ...], str, tuple[str, ...]]:
    """``(containers, prefix, ignored buffers)`` of an EDM state_dict for ``convert.load_tree``."""
    return ("enc", "dec"), "model.", ("resample_filter", "u")


def _precond(name: str, kw: dict, cfg: EDMNetConfig):
    if name == "EDMPrecond":
        process = EDM(t_min=max(float(kw.get("sigma_min", 0.0)), 0.002),
                      t_max=min(float(kw.get("sigma_max", float("inf"))), 80.0))
        return process, EDMPreconds("edm", process, float(kw.get("sigma_data", 0.5)),
                                    img_channels=kw["img_channels"])
    if name == "VPPrecond":
        process = vp_for_edm(float(kw.get("beta_min", 0.1)), float(kw.get("beta_d", 19.9)))
        return process, EDMPreconds("vp", process, m=int(kw.get("M", 1000)),
                                    img_channels=kw["img_channels"])
    if name == "iDDPMPrecond":
        c1, c2, m = float(kw.get("C_1", 0.001)), float(kw.get("C_2", 0.008)), int(kw.get("M", 1000))
        process = DiscreteVP(betas="iddpm", num_timesteps=m)
        if (c1, c2) != (0.001, 0.008):
            raise PretrainedError(f"iDDPMPrecond with C_1={c1}, C_2={c2}: only EDM's defaults "
                                  "(0.001, 0.008) are supported")
        return process, EDMPreconds("iddpm", process, m=m, img_channels=kw["img_channels"])
    process = ve_for_edm(float(kw.get("sigma_min", 0.02)), float(kw.get("sigma_max", 100.0)))
    return process, EDMPreconds("ve", process, img_channels=kw["img_channels"])


def read(path: Path):
    """``(network, precond, info, process, shape, weights_path)`` of an export folder."""
    cfg_path = path / "config.json"
    raw = read_json(cfg_path)
    name, kw = raw.get("precond"), raw.get("kwargs")
    if name not in PRECONDS:
        raise PretrainedError(f"{cfg_path}: precond {name!r} is not supported; supported: "
                              f"{', '.join(PRECONDS)}")
    if not isinstance(kw, dict) or "img_resolution" not in kw or "img_channels" not in kw:
        raise PretrainedError(f"{cfg_path}: 'kwargs' must hold the precond's constructor "
                              "arguments (img_resolution, img_channels, ...); export again with "
                              "scripts/export_edm.py")
    model_type = raw.get("model_type") or kw.get("model_type")
    if model_type not in EDM_NETWORKS:
        raise PretrainedError(f"{cfg_path}: model_type {model_type!r} is not supported; "
                              f"supported: {', '.join(EDM_NETWORKS)}")
    fields = {f.name for f in dataclasses.fields(EDMNetConfig)}
    net_kw = {k: v for k, v in kw.items() if k not in PRECOND_ARGS}
    unknown = sorted(set(net_kw) - fields)
    if unknown:
        raise PretrainedError(f"{cfg_path}: unknown {model_type} arguments {', '.join(unknown)}")
    out_ch = kw["img_channels"]
    learned_var = 2 if name == "iDDPMPrecond" else 1  # iDDPM's network also outputs variances
    cfg = edm_config(model_type, img_resolution=kw["img_resolution"], in_channels=out_ch,
                     out_channels=learned_var * out_ch, label_dim=int(kw.get("label_dim", 0)),
                     **net_kw)
    process, precond = _precond(name, kw, cfg)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise PretrainedError(f"{weights} is missing (the network's weights); export again with "
                              "scripts/export_edm.py")
    info = NetInfo(num_classes=cfg.label_dim, null_class=bool(cfg.label_dim))
    shape = (cfg.img_resolution, cfg.img_resolution, out_ch)
    return EDM_NETWORKS[model_type](cfg), precond, info, process, shape, weights
