"""Experiment files and ``--config.a.b=value`` overrides (the entry point's business only)."""

from __future__ import annotations

import ast
import difflib
import importlib.util
from pathlib import Path

from ml_collections import ConfigDict


def load_config(path: str, overrides: list[str] = ()) -> ConfigDict:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"experiment_{p.stem}", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    for item in overrides:
        apply_override(config, item)
    return config


def _keys(cfg: ConfigDict, prefix=""):
    for k, v in cfg.items():
        yield prefix + k
        if isinstance(v, ConfigDict):
            yield from _keys(v, prefix + k + ".")


def apply_override(config: ConfigDict, item: str) -> None:
    """``config.train.steps=100`` (leading ``--`` and ``config.`` optional)."""
    item = item.lstrip("-")
    if item.startswith("config."):
        item = item[len("config."):]
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like --config.train.steps=100")
    key, raw = item.split("=", 1)
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            valid = list(_keys(config))
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise KeyError(f"unknown config key {key!r}{hint}")
        if i < len(parts) - 1:
            node = node[part]
    old = node[parts[-1]]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(old, bool) and isinstance(value, str):
        value = value.lower() in ("1", "true", "yes")
    elif isinstance(old, float) and isinstance(value, int):
        value = float(value)
    elif isinstance(old, tuple) and isinstance(value, (list, int)):
        value = tuple(value) if isinstance(value, list) else (value,)
    elif isinstance(old, str) and not isinstance(value, str):
        value = raw
    node[parts[-1]] = value


def cifar10_tpu(c):
    """The data, mesh and schedule of the CIFAR-10 TPU experiments, applied to a Fashion-MNIST
    experiment ``c`` (in place; returned): 32x32x3 from TFDS with flips, batch 256, 200k steps."""
    c.data.dataset = "tfds:cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.random_flip = True
    c.mesh = {"data": -1, "fsdp": 1}
    c.train.steps = 200_000
    c.train.batch_size = 256
    c.train.log_every = 100
    c.train.ckpt_every = 5000
    c.train.sample_every = 10_000
    c.train.time_limit_minutes = 0.0
    return c
