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
