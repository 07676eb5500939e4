"""A trained workdir, read for generation and evaluation: its stored experiment and the
parameters sampling uses (EMA, or the live ones), restored straight into abstract sharded targets
(no initialisation, no optimizer state).

    exp, params, step = load("runs/fm")
    images = exp.method.sample(params, jax.random.key(0), 16)
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.experiment import Experiment, from_config, stored
from diffusion_jax.methods.classifier import ClassifierMethod
from diffusion_jax.parallel import make_mesh


class WorkdirError(ValueError):
    """A workdir that cannot be read: the message says what to run."""


def _checkpointer(workdir: str | Path) -> Checkpointer:
    path = Path(workdir) / "checkpoints"
    if not path.is_dir():  # never create folders in a mistyped workdir
        raise WorkdirError(f"no checkpoints in {Path(workdir)}: train first with "
                           f"`python -m diffusion_jax train --config ... --workdir {workdir}`")
    ckpt = Checkpointer(workdir)
    if ckpt.latest_step() is None:
        raise WorkdirError(f"no checkpoint in {ckpt.dir}: train first with "
                           f"`python -m diffusion_jax train --config ... --workdir {workdir}`")
    return ckpt


def read_experiment(workdir: str | Path) -> Experiment:
    """The experiment stored with the newest checkpoint (cheap: no array is read)."""
    return from_config(stored(_checkpointer(workdir).read_config()))


def load(workdir: str | Path, ema: bool = True) -> tuple[Experiment, object, int]:
    """``(experiment, params, step)``: the newest checkpoint's sampling parameters (``ema=False``:
    the live ones), laid out on the mesh the experiment declares."""
    ckpt = _checkpointer(workdir)
    exp = from_config(stored(ckpt.read_config()))
    mesh = make_mesh(exp.mesh.axes)
    abstract, _ = exp.method.abstract_state(mesh, exp.mesh.rules)
    field = "ema_params" if ema else "params"
    step = ckpt.latest_step()
    out = ckpt.restore_subtree(step, {field: getattr(abstract, field)})
    return exp, out[field], step


def summary(workdir: str | Path) -> dict:
    """What the training loop reported when it ended (``summary.json``; ``{}`` if none)."""
    path = Path(workdir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_classifier(workdir: str | Path):
    """A classifier workdir -> ``(model, params, info)``; ``info`` has ``num_classes``,
    ``noise_conditional``, ``process`` (name or None), ``feature_dim``, ``test_accuracy``."""
    exp, params, _ = load(workdir)
    if not isinstance(exp.method, ClassifierMethod):
        raise WorkdirError(f"{workdir} holds a {exp.method_name!r} run, not a classifier: train one "
                           "with `python -m diffusion_jax train --config "
                           "experiments/fashion_mnist_classifier.py --workdir DIR`")
    m = exp.method
    info = {"num_classes": m.model.num_classes, "noise_conditional": m.process is not None,
            "process": None if m.process is None else m.process.name, "feature_dim": m.model.feature_dim,
            "test_accuracy": summary(workdir).get("test_accuracy")}
    return m.model, jax.device_get(params), info
