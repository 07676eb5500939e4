"""Parameters back to a pretrained folder's format: a model fine-tuned here (``init_from``) is
written as the same diffusers folder or EDM export it started from, readable by diffusers / EDM
and by ``dj.load_pretrained``.

The torch key of a flax leaf inverts ``convert.flax_path``: a name ``resnets_1`` is the list
entry ``resnets.1`` when ``resnets`` is one of the format's list names, and ``enc_32x32_conv``
is the ``enc`` dictionary's ``32x32_conv``; kernels go back to torch's layouts.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import flax
import jax
import numpy as np

from diffusion_jax.pretrained import diffusers_folder, edm_export
from diffusion_jax.pretrained.convert import PretrainedError
from diffusion_jax.utils import safetensors_io

# the torch ModuleLists of UNet2DModel (and its blocks) whose entries flax names NAME_i
DIFFUSERS_LISTS = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers",
                   "upsamplers", "to_out")


def torch_key(path: tuple[str, ...], lists=(), containers=(), prefix: str = "") -> str:
    """The torch key of a flax leaf path (``kernel``/``scale``/``embedding`` -> ``weight``)."""
    parts = []
    for name in path[:-1]:
        m = re.fullmatch(r"(.+)_(\d+)", name)
        c = next((c for c in containers if name.startswith(c + "_")), None)
        if m and m.group(1) in lists:
            parts += [m.group(1), m.group(2)]
        elif c:
            parts += [c, name[len(c) + 1:]]
        else:
            parts.append(name)
    leaf = path[-1]
    parts.append("weight" if leaf in ("kernel", "scale", "embedding") else leaf)
    return prefix + ".".join(parts)


def to_torch(path: tuple[str, ...], value) -> np.ndarray:
    v = np.asarray(jax.device_get(value), np.float32)
    if path[-1] == "kernel" and v.ndim == 4:
        return np.ascontiguousarray(np.transpose(v, (3, 2, 0, 1)))
    if path[-1] == "kernel" and v.ndim == 2:
        return np.ascontiguousarray(v.T)
    return v


def state_dict(net_params, fmt: str) -> dict[str, np.ndarray]:
    """The torch state_dict (float32) of a network's flax parameters in format ``fmt``."""
    if fmt == "diffusers":
        naming = dict(lists=DIFFUSERS_LISTS)
    else:
        containers, prefix, _ = edm_export.naming()
        naming = dict(containers=containers, prefix=prefix)
    flat = flax.traverse_util.flatten_dict(net_params)
    return {torch_key(p, **naming): to_torch(p, v) for p, v in flat.items()}


def export_folder(source, params, out, fmt: str) -> Path:
    """``source``'s folder with its weights replaced by ``params`` (the ``PretrainedDenoiser``
    tree: ``{"net": ...}``), written to ``out``; EDM's recomputed buffers (resampling filters)
    are copied from the source file. ``out`` must not exist (nothing is overwritten)."""
    source, out = Path(source), Path(out)
    if out.exists():
        raise PretrainedError(f"{out} exists: export writes a new folder (remove it or pick "
                              "another --out)")
    tensors = state_dict(params["net"], fmt)
    weights = (Path("unet") / diffusers_folder.WEIGHTS if fmt == "diffusers"
               else Path(edm_export.WEIGHTS))
    if fmt == "edm":
        old = safetensors_io.read(source / weights)
        ignore = edm_export.naming()[2]
        tensors.update({k: np.asarray(v) for k, v in old.items() if k.endswith(ignore)})
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(
        "*.safetensors", "*.bin", "*.pkl", "*.pt", "grids", "eval", "reference.npz"))
    safetensors_io.write(tmp / weights, tensors, {"format": "pt"})
    tmp.rename(out)
    return out
