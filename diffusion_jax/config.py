"""Experiment files and ``--config.a.b=value`` overrides (the entry point's business only)."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import traceback
from pathlib import Path

from ml_collections import ConfigDict


# Top-level keys any experiment accepts from the command line without declaring them:
# ``init_from`` (start the model from a pretrained folder or a trained workdir).
OPTIONAL_KEYS = {"init_from": ""}


def packaged_experiments() -> dict[str, Path]:
    """``{name: file}`` of the experiments that ship with the package."""
    folder = Path(__file__).resolve().parent / "experiments"
    return {p.stem: p for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")}


def describe_experiments() -> list[tuple[str, str]]:
    """``(name, the first line of its docstring)`` of every packaged experiment (read from the
    source: nothing is imported)."""
    out = []
    for name, path in packaged_experiments().items():
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = " ".join(doc.strip().split("\n\n")[0].split()).split(". ")[0].rstrip(".")
        out.append((name, first if len(first) <= 100 else first[:99] + "…"))
    return out


def resolve_experiment(path: str) -> Path:
    """An experiment file: ``path`` itself when it names a file, else the packaged experiment
    called ``path`` (``fashion_mnist_ddpm`` or ``fashion_mnist_ddpm.py``)."""
    p = Path(path)
    if p.exists() or "/" in str(path) or "\\" in str(path):
        return p
    known = packaged_experiments()
    name = p.stem if p.suffix == ".py" else str(path)
    if name in known:
        return known[name]
    near = difflib.get_close_matches(name, list(known), n=5, cutoff=0.0)
    raise FileNotFoundError(f"--config {path} is neither a file nor a packaged experiment; "
                            f"closest: {', '.join(near)} (python -m diffusion_jax experiments "
                            "lists them)")


def load_config(path: str, overrides: list[str] = ()) -> ConfigDict:
    """The ``ConfigDict`` of an experiment file's ``get_config()`` (a path, or the name of a
    packaged experiment), with ``overrides`` applied; every way the file can be wrong is one line
    naming the file (and the line)."""
    config = _get_config(resolve_experiment(path))
    for item in overrides:
        apply_override(config, item)
    return config


def _get_config(p: Path) -> ConfigDict:
    if not p.exists():
        raise FileNotFoundError(f"config file {p} does not exist")
    if p.is_dir():
        raise ValueError(f"--config {p} is a folder: give an experiment file "
                         "(experiments/NAME.py)")
    if p.suffix != ".py":
        raise ValueError(f"--config {p} is not a Python file: an experiment is a .py file with "
                         "get_config() (experiments/NAME.py)")
    spec = importlib.util.spec_from_file_location(f"experiment_{p.stem}", p)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except SyntaxError as e:
        raise ValueError(f"{p}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 - the user's file failed: say where, in one line
        raise ValueError(f"{p}:{_line_in(p, e)}: {type(e).__name__}: {e}") from None
    if not callable(getattr(mod, "get_config", None)):
        raise ValueError(f"{p} defines no get_config(): an experiment file returns its "
                         "ConfigDict from get_config()")
    try:
        config = mod.get_config()
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{p}:{_line_in(p, e)}: get_config() failed: {type(e).__name__}: "
                         f"{e}") from None
    if not isinstance(config, ConfigDict):
        raise ValueError(f"{p}: get_config() returned a {type(config).__name__}, not an "
                         "ml_collections.ConfigDict")
    return config


def _line_in(path: Path, e: BaseException) -> int | str:
    """The line of ``path`` where ``e`` was raised (the innermost frame in that file)."""
    line = "?"
    for frame in traceback.extract_tb(e.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    return line


def _keys(cfg: ConfigDict, prefix=""):
    for k, v in cfg.items():
        yield prefix + k
        if isinstance(v, ConfigDict):
            yield from _keys(v, prefix + k + ".")


BOOLS = {"true": True, "1": True, "false": False, "0": False}


def apply_override(config: ConfigDict, item: str) -> None:
    """``config.train.steps=100`` (leading ``--`` and ``config.`` optional). The value is
    parsed as the type the experiment gives the key (a bool takes true/false/1/0 only); a value
    of another type is refused with the key named."""
    item = item.lstrip("-")
    if item.startswith("config."):
        item = item[len("config."):]
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like --config.train.steps=100")
    key, raw = item.split("=", 1)
    if key in OPTIONAL_KEYS and key not in config:  # keys an experiment may leave out
        config[key] = OPTIONAL_KEYS[key]
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            valid = list(_keys(config))
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise KeyError(f"unknown config key {key!r}{hint}")
        if i < len(parts) - 1:
            node = node[part]
    node[parts[-1]] = _typed_value(key, raw, node[parts[-1]])


def _typed_value(key: str, raw: str, old):
    """``raw`` as a value of ``old``'s type."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    bad = lambda what: ValueError(f"--config.{key}={raw!r} is not {what}")
    if isinstance(old, bool):
        if raw.strip().lower() not in BOOLS:
            raise bad("a boolean (true, false, 1 or 0)")
        return BOOLS[raw.strip().lower()]
    if isinstance(old, int) and not isinstance(old, bool):
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        return value
    if isinstance(old, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if isinstance(old, tuple):
        if isinstance(value, (list, tuple)):
            return tuple(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (value,)
        raise bad("a tuple, e.g. (1, 2)")
    if isinstance(old, str):  # 'float32' and float32 both mean the string
        return value if isinstance(value, str) else raw
    if isinstance(old, ConfigDict):
        raise ValueError(f"--config.{key} is a section: set one of its keys "
                         f"(--config.{key}.NAME=VALUE)")
    return value


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
