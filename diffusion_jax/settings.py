"""The typed sections every experiment shares, and what a family's builder receives.

``experiment.from_config`` turns a ``ConfigDict`` into these frozen dataclasses once; each family
(``methods/NAME.py``) reads its own sections through ``BuildContext.typed`` and builds its
method. Nothing below the entry point reads a config.

    def build(ctx: BuildContext) -> MyMethod:
        s = ctx.typed(MySettings, "mine")        # unknown keys get "did you mean"
        return MyMethod(..., tx=ctx.tx, shape=ctx.data.shape)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable

import flax.linen as nn
import optax

from diffusion_jax.optim import make_optimizer
from diffusion_jax.samplers import GRIDS, SAMPLERS


class ConfigError(ValueError):
    """An experiment that cannot be built: the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    dataset: str
    data_dir: str = ""
    image_size: int = 0
    channels: int = 0
    dim: int = 0              # > 0: vector data of this size (synthetic mixtures)
    num_classes: int = 0
    random_flip: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape: ``(dim,)`` for vector data, else ``(size, size, channels)``."""
        return (self.dim,) if self.dim else (self.image_size, self.image_size, self.channels)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    lr: float
    warmup_steps: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 1
    b2: float = 0.999
    b1: float = 0.9


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    steps: int
    batch_size: int
    ema_decay: float = 0.999
    ema_start: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    sample_every: int = 0
    keep: int = 3
    time_limit_minutes: float = 0.0
    fid_every: int = 0          # training-time FD every this many steps (0: off)
    fid_num: int = 500
    fid_classifier: str = ""    # its feature extractor: a classifier workdir ...
    fid_inception: str = ""     # ... or Inception-v3 weights (.npz)


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    sampler: str = "dpmpp_2m"
    num_steps: int = 20
    num: int = 64
    grid: str = "default"  # the sampler's own (samplers.DEFAULT_GRIDS)
    guidance: float | None = None   # classifier-free guidance scale (class-conditional models)
    prompts: tuple = ()             # text-to-image fine-tuning: the training previews' prompts


@dataclasses.dataclass(frozen=True)
class StoredRun:
    """A trained workdir a builder depends on (a teacher, an autoencoder): its experiment and a
    reader of its EMA parameters (host arrays, no optimizer state)."""
    path: str
    experiment: Any                     # experiment.Experiment
    load_params: Callable[[], Any]


def plain(v):
    """ConfigDicts and dicts -> dicts, lists -> tuples, recursively (JSON configs come back with
    lists where the experiment had tuples)."""
    if hasattr(v, "items"):  # ConfigDict or dict
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return tuple(plain(x) for x in v)
    return v


def typed(cls, section, where: str, **fixed):
    """``cls(**section, **fixed)`` with unknown keys ("did you mean") and missing required keys
    named as ``where.key``."""
    given = {} if section is None else plain(section)
    skip = set(fixed) | ({"parent", "name"} if issubclass(cls, nn.Module) else set())
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    names = [f.name for f in fields]
    for key in given:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {where}.{near[0]}?" if near else ""
            raise ConfigError(f"unknown config key {where}.{key}{hint} (valid: {', '.join(names)})")
    for f in fields:
        if (f.name not in given and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING):
            raise ConfigError(f"the experiment is missing the required field {where}.{f.name}")
        if f.name in given:
            check_field(f, given[f.name], where)
    return cls(**given, **fixed)


# Ranges beyond what a field's type and default say (see ``check_field``): "section.field" ->
# (test, what it must be).
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "optimizer.lr": (lambda v: v > 0, "> 0"),
    "optimizer.weight_decay": (lambda v: v >= 0, ">= 0"),
    "optimizer.grad_clip": (lambda v: v >= 0, ">= 0 (0: no clipping)"),
    "optimizer.b1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.b2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.schedule": (lambda v: v in ("constant", "cosine"), "'constant' or 'cosine'"),
    "train.steps": (lambda v: v >= 1, ">= 1"),
    "train.batch_size": (lambda v: v >= 1, ">= 1"),
    "train.ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0: no averaging)"),
    "train.time_limit_minutes": (lambda v: v >= 0, ">= 0 (0: no limit)"),
    "train.fid_num": (lambda v: v >= 2, ">= 2"),
    "sample.guidance": (lambda v: v is None or v >= 0, ">= 0 (or None: no guidance)"),
    "sample.sampler": (lambda v: v in SAMPLERS, f"one of {', '.join(SAMPLERS)}"),
    "sample.grid": (lambda v: v == "default" or v in GRIDS,
                    f"'default' or one of {', '.join(GRIDS)}"),
    "model.latent_dim": (lambda v: v >= 0, ">= 0 (0: a spatial latent)"),
    "model.channel_mult": (lambda v: len(v) >= 1 and all(isinstance(m, int) and m >= 1
                                                         for m in v),
                           "a non-empty tuple of integers >= 1, e.g. (1, 2, 2)"),
    "model.attn_resolutions": (lambda v: all(isinstance(r, int) and r >= 1 for r in v),
                               "a tuple of resolutions >= 1 (empty: no attention)"),
    "model.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.cond_drop": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "sample.prompts": (lambda v: all(isinstance(p, str) for p in v), "a tuple of strings"),
    "model.mlp_ratio": (lambda v: v > 0, "> 0"),
    "model.time_scale": (lambda v: v > 0, "> 0"),
    "model.dtype": (lambda v: v in ("float32", "bfloat16", "float16"),
                    "one of float32, bfloat16, float16"),
}


def check_field(f: dataclasses.Field, value, where: str) -> None:
    """``value`` against field ``f``'s type (``int``, ``float``, ``bool``, ``str``, tuples,
    ``X | None``, ``Literal``), then its range: ``RULES``, else an integer whose default is
    positive is a count (``>= 1``) and one whose default is 0 is ``>= 0`` (0: off)."""
    name = f"{where}.{f.name}"
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    optional = kind.endswith("| None")
    kind = kind.removesuffix("| None").strip()
    if not (optional and value is None):
        _check_type(name, kind, value)
    if name in RULES:
        test, want = RULES[name]
        if not test(value):
            raise ConfigError(f"{name}={value!r} must be {want}")
    elif kind == "int" and isinstance(f.default, int) and value is not None:
        low = 1 if f.default >= 1 else 0
        if value < low:
            raise ConfigError(f"{name}={value} must be >= {low}"
                              + (" (0: off)" if low == 0 else ""))


def check_rule(name: str, value) -> None:
    """``RULES[name]`` for a value read outside a dataclass (``model.dtype``, ...)."""
    test, want = RULES[name]
    if not test(value):
        raise ConfigError(f"{name}={value!r} must be {want}")


def _check_type(name: str, kind: str, value) -> None:
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)
                              and math.isfinite(v)),
          "bool": lambda v: isinstance(v, bool),
          "str": lambda v: isinstance(v, str)}
    words = {"int": "an integer", "float": "a finite number", "bool": "true or false",
             "str": "a string"}
    if kind in ok and not ok[kind](value):
        raise ConfigError(f"{name}={value!r} is not {words[kind]}")
    if kind.startswith("tuple") and not isinstance(value, tuple):
        raise ConfigError(f"{name}={value!r} is not a tuple, e.g. (1, 2)")
    if kind.startswith("Literal["):
        options = [o.strip().strip("'\"") for o in kind[len("Literal["):-1].split(",")]
        if value not in options:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(options)}")


def split(section, keys: tuple[str, ...]) -> tuple[dict, dict]:
    """``(the given keys, the rest)`` of a section."""
    d = plain(section) if section is not None else {}
    return {k: d[k] for k in keys if k in d}, {k: v for k, v in d.items() if k not in keys}


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a family's ``build(ctx)`` receives: the shared typed sections, the optimizer, its own
    sections (``section``/``typed``) and ``stored(path, field)`` to read a trained workdir."""
    config: Any                         # the ConfigDict: read only through section() / typed()
    data: DataSpec
    optimizer: OptimizerSpec
    train: TrainSpec
    sample: SampleSpec
    stored: Callable[[str, str], StoredRun]

    def section(self, name: str, required: bool = True):
        """The section ``name`` as plain data (``None`` when absent and not required)."""
        if name in self.config:
            return plain(self.config[name])
        if required:
            raise ConfigError(f"the experiment is missing the required section {name!r}")
        return None

    def typed(self, cls, name: str, required: bool = False, **fixed):
        return typed(cls, self.section(name, required), name, **fixed)

    def make_tx(self, lr: float | None = None) -> optax.GradientTransformation:
        """The experiment's optimizer (``lr`` replaces its learning rate: a second network's)."""
        o, t = self.optimizer, self.train
        return make_optimizer(lr or o.lr, o.warmup_steps, t.steps, o.schedule, o.weight_decay,
                              o.b2, o.grad_clip, o.grad_accum, o.b1)

    @property
    def tx(self) -> optax.GradientTransformation:
        return self.make_tx()
