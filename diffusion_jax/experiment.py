"""An experiment config (``ConfigDict``) translated, once, into frozen dataclasses and a method.

This is the only module that reads a ``ConfigDict``: the loop, the workdir reader, evaluation and
the CLI receive an ``Experiment``. The shared sections (``data``, ``optimizer``, ``train``,
``sample``) are typed in ``settings``; each family's own sections and its builder live in its
``methods/NAME.py`` and are found through ``METHODS``, one line per family. Unknown keys get a
"did you mean" error and missing required keys are named, before anything is compiled.

Sections: ``seed``, ``method`` (a name in ``METHODS``), ``mesh`` ({axis: size}),
``sharding_rules`` (optional logical-axis rules; ``DEFAULT_RULES``), ``data``, ``model``,
``optimizer``, ``train``, ``sample``, and each method's ``SECTIONS``. A section of another
method is refused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.methods import (autoregressive, classifier, consistency, diffusion, flow, gan,
                                   meanflow, progressive, reflow, student, vae)
from diffusion_jax.methods.base import Method
from diffusion_jax.parallel import DEFAULT_RULES, make_mesh
from diffusion_jax.pretrained import is_pretrained, load_pretrained, read_method
from diffusion_jax.samplers import resolve_sampler
from diffusion_jax.settings import (BuildContext, ConfigError, DataSpec, OptimizerSpec, SampleSpec,
                                    StoredRun, TrainSpec, plain, typed)
from diffusion_jax.utils.memory import check_fits

__all__ = ["ConfigError", "DataSpec", "OptimizerSpec", "TrainSpec", "SampleSpec", "MeshSpec",
           "Experiment", "METHODS", "register_method", "from_config", "stored", "DEFAULT_RULES"]


# The one name -> family table: a family is a module (or any object) with ``build(ctx) ->
# Method`` and ``SECTIONS``, the config sections only it reads (another method's are refused).
METHODS: dict[str, Any] = {
    "diffusion": diffusion,
    "classifier": classifier,
    "gan": gan,
    "vae": vae,
    "flow": flow,
    "consistency": consistency,
    "autoregressive": autoregressive,
    "meanflow": meanflow,
    "progressive": progressive,
    "reflow": reflow,
    "student": student,
}


def register_method(name: str, family) -> None:
    """Add a family from outside the package (``family.build``, ``family.SECTIONS``)."""
    METHODS[name] = family


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    axes: tuple[tuple[str, int], ...] = (("data", -1),)
    rules: tuple = DEFAULT_RULES


@dataclasses.dataclass(frozen=True)
class Experiment:
    method_name: str
    seed: int
    data: DataSpec
    mesh: MeshSpec
    optimizer: OptimizerSpec
    train: TrainSpec
    sample: SampleSpec
    method: Method
    config: dict  # the config as JSON data: stored with every checkpoint

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape


def _section(config: ConfigDict, name: str, required: bool = True):
    if name in config:
        return config[name]
    if required:
        raise ConfigError(f"the experiment is missing the required section {name!r}")
    return None


def _mesh(config: ConfigDict) -> MeshSpec:
    axes = tuple((str(k), int(v)) for k, v in plain(_section(config, "mesh", False) or {}).items())
    rules = plain(config.get("sharding_rules")) or DEFAULT_RULES
    mesh_axes = {a for a, _ in axes} if axes else {"data"}
    if "sharding_rules" in config:  # the user's own rules must name axes the mesh has
        for logical, target in rules:
            for ax in (target if isinstance(target, tuple) else (target,) if target else ()):
                if ax not in mesh_axes:
                    raise ConfigError(f"sharding rule {logical!r} -> {ax!r} names a mesh axis the "
                                      f"mesh {dict(axes)} does not have; mesh axes: "
                                      f"{', '.join(sorted(mesh_axes))}")
    return MeshSpec(axes or MeshSpec.axes, tuple(rules))


def pretrained_experiment(path) -> Experiment:
    """A pretrained folder (``dj.load_pretrained``) as the ``Experiment`` that ``sample``,
    ``eval``, ``likelihood``, ``optimize-grid`` and ``bench-samplers`` read (configs only: no
    tensor is read). It has no dataset: image inputs come from files."""
    method, _, _, fmt = read_method(path)
    h, w, c = method.shape
    data = DataSpec(dataset="", image_size=h, channels=c, num_classes=method.num_classes)
    return Experiment("pretrained", 0, data, MeshSpec(), OptimizerSpec(lr=0.0),
                      TrainSpec(steps=0, batch_size=1), SampleSpec(), method,
                      {"pretrained": str(path), "format": fmt})


def stored_run(path: str, field: str) -> StoredRun:
    """A trained workdir (or a pretrained folder) a builder depends on: its experiment and a
    reader of its EMA parameters (host arrays, restored without the optimizer state)."""
    if path and is_pretrained(path):
        one = lambda: make_mesh((("data", 1),), devices=jax.devices()[:1])
        return StoredRun(path, pretrained_experiment(path),
                         lambda: jax.device_get(load_pretrained(path, mesh=one()).params))
    if not path or not (Path(path) / "checkpoints").is_dir() or \
            Checkpointer(path).latest_step() is None:
        raise ConfigError(f"{field}={path!r} holds no checkpoint: train it first")
    exp = from_config(stored(Checkpointer(path).read_config()))

    def load():
        mesh = make_mesh((("data", 1),), devices=jax.devices()[:1])
        abstract, _ = exp.method.abstract_state(mesh, exp.mesh.rules)
        ck = Checkpointer(path)
        out = ck.restore_subtree(ck.latest_step(), {"ema_params": abstract.ema_params})
        return jax.device_get(out["ema_params"])

    return StoredRun(path, exp, load)


def _check_sections(config, name: str) -> None:
    for section in sorted({s for v in (f.SECTIONS for f in METHODS.values()) for s in v}):
        if section in config and section not in METHODS[name].SECTIONS:
            owners = [m for m, f in METHODS.items() if section in f.SECTIONS]
            keys = list(plain(config[section]) or {}) if isinstance(config[section], ConfigDict) else []
            field = f"{section}.{keys[0]}" if keys else section
            raise ConfigError(f"{field} is a setting of the {'/'.join(owners)} method; this "
                              f"experiment's method is {name!r}: remove the {section!r} section")


def from_config(config: ConfigDict) -> Experiment:
    """The typed experiment; every error is raised here, before anything is compiled."""
    name = config.get("method", "diffusion")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    _check_sections(config, name)
    data = typed(DataSpec, _section(config, "data"), "data")
    opt = typed(OptimizerSpec, _section(config, "optimizer"), "optimizer")
    train = typed(TrainSpec, _section(config, "train"), "train")
    sample = typed(SampleSpec, _section(config, "sample", False), "sample")
    _check_train(train, data)
    _check_sample(sample)
    ctx = BuildContext(config, data, opt, train, sample, stored_run)
    method = METHODS[name].build(ctx)
    return Experiment(name, int(config.get("seed", 0)), data, _mesh(config), opt, train, sample,
                      method, json.loads(config.to_json()))


def _check_sample(s: SampleSpec) -> None:
    """The ``sample`` section (used by previews and ``sample``), checked when training starts."""
    sampler = resolve_sampler(s.sampler)
    if s.num_steps < sampler.min_steps:
        raise ConfigError(f"sample.num_steps={s.num_steps}: {s.sampler} needs at least "
                          f"{sampler.min_steps} steps")


def _check_train(t: TrainSpec, data: DataSpec) -> None:
    if not data.dim and (data.image_size < 1 or data.channels < 1):
        raise ConfigError(f"image data needs data.image_size >= 1 and data.channels >= 1 (got "
                          f"{data.image_size} and {data.channels}); vector data sets data.dim")
    # the batch as the step sees it: the images, their noise and the noised copy at least
    check_fits(t.batch_size, data.shape, f"train.batch_size={t.batch_size}", copies=3)
    if t.fid_every and not (t.fid_classifier or t.fid_inception):
        raise ConfigError(f"train.fid_every={t.fid_every} needs a feature extractor: set "
                          "train.fid_classifier=DIR (a classifier workdir) or "
                          "train.fid_inception=W.npz")


def stored(config_json: dict) -> Any:
    """The ``ConfigDict`` of a config stored as JSON with a checkpoint (tuples restored)."""
    return ConfigDict(plain(config_json))
