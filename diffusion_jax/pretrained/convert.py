"""A torch ``state_dict`` (read from safetensors) onto a flax parameter tree, by name.

The flax modules of ``models/`` that reproduce a torch architecture name their submodules as the
torch module tree does, with list indices joined to the name before them: the torch key
``down_blocks.0.resnets.1.conv1.weight`` is the flax leaf ``down_blocks_0/resnets_1/conv1/kernel``.
Only the layouts differ: a conv weight ``[O, I, kh, kw]`` is an ``[kh, kw, I, O]`` kernel, a
linear weight ``[O, I]`` an ``[I, O]`` kernel, a norm's ``weight`` its ``scale``, an embedding's
``weight`` its ``embedding``. Every tensor must be used and every parameter filled with the shape
the architecture expects; otherwise the error names the first three differences.
"""

from __future__ import annotations

import re

import flax
import flax.linen as nn
import numpy as np


class PretrainedError(ValueError):
    """A pretrained folder that cannot be read: the message names the file and what is wrong."""


# diffusers renamed the attention block's tensors; hub checkpoints saved before that (e.g.
# google/ddpm-cifar10-32) still use the old names, which diffusers renames when loading.
DEPRECATED_ATTENTION = (("query", "to_q"), ("key", "to_k"), ("value", "to_v"),
                        ("proj_attn", "to_out.0"))


def flax_path(key: str, containers: tuple[str, ...] = (), prefix: str = "") -> tuple[str, ...]:
    """The flax path of a torch key: indices (and the keys of ``containers``, torch ModuleDicts)
    joined to the name before them; ``prefix`` (e.g. ``model.``) dropped."""
    if prefix and key.startswith(prefix):
        key = key[len(prefix):]
    out: list[str] = []
    for tok in key.split("."):
        if out and (tok.isdigit() or out[-1] in containers):
            out[-1] = f"{out[-1]}_{tok}"
        else:
            out.append(tok)
    return tuple(out)


def _leaf_names(torch_leaf: str) -> tuple[str, ...]:
    return ("kernel", "scale", "embedding", "weight") if torch_leaf == "weight" else (torch_leaf,)


def _to_flax(name: str, t: np.ndarray) -> np.ndarray:
    if name == "kernel" and t.ndim == 4:
        return np.transpose(t, (2, 3, 1, 0))
    if name == "kernel" and t.ndim == 2:
        return t.T
    return t


def torch_shape(name: str, shape: tuple) -> tuple:
    """The torch shape that becomes a flax leaf of ``shape``."""
    if name == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if name == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def rename_deprecated(tensors: dict) -> dict:
    out = {}
    for k, v in tensors.items():
        for old, new in DEPRECATED_ATTENTION:
            k = re.sub(rf"\.{old}\.(weight|bias)$", rf".{new}.\1", k)
        out[k] = v
    return out


def load_tree(tensors: dict, abstract, file: str, containers: tuple[str, ...] = (),
              prefix: str = "", ignore: tuple[str, ...] = ()) -> dict:
    """``tensors`` ({torch key: array}) as a float32 parameter tree shaped like ``abstract``
    (a tree of arrays or ``ShapeDtypeStruct``s). Keys ending in one of ``ignore`` (buffers the
    architecture recomputes) are skipped."""
    want = flax.traverse_util.flatten_dict(nn.meta.unbox(abstract))
    got, unexpected, wrong, seen = {}, [], [], set()
    for key in sorted(tensors):
        if key.endswith(ignore) and ignore:
            continue
        path = flax_path(key, containers, prefix)
        match = [path[:-1] + (n,) for n in _leaf_names(path[-1]) if path[:-1] + (n,) in want]
        if not match:
            unexpected.append(key)
            continue
        target = match[0]
        seen.add(target)
        expected = torch_shape(target[-1], want[target].shape)
        if tuple(tensors[key].shape) != expected:
            wrong.append(f"{key} is {tuple(tensors[key].shape)}, the config gives {expected}")
            continue
        got[target] = _to_flax(target[-1], np.asarray(tensors[key], np.float32))
    missing = [".".join(p) for p in want if p not in seen]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} tensor shapes differ from the config's: " + "; ".join(wrong[:3]))
    if missing:
        problems.append(f"{len(missing)} parameters missing from the file: " + ", ".join(missing[:3]))
    if unexpected:
        problems.append(f"{len(unexpected)} tensors the config has no place for: "
                        + ", ".join(unexpected[:3]))
    if problems:
        raise PretrainedError(f"{file} does not match its config: {' | '.join(problems)}")
    return flax.traverse_util.unflatten_dict(got)
