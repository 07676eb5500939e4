"""A trained workdir, read for generation and evaluation: its stored experiment and the
parameters sampling uses (EMA, or the live ones), restored straight into abstract sharded targets
(no initialisation, no optimizer state).

    exp, params, step = load("runs/fm")
    images = exp.method.sample(params, jax.random.key(0), 16)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import jax

from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.experiment import (ConfigError, Experiment, from_config,
                                      pretrained_experiment, stored)
from diffusion_jax.methods.classifier import ClassifierMethod
from diffusion_jax.parallel import make_mesh
from diffusion_jax.pretrained import is_pretrained, load_pretrained
from diffusion_jax.pretrained.export import export_folder


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
    """The experiment stored with the newest readable checkpoint (cheap: no array is read); a
    pretrained folder's (``dj.load_pretrained``) from its configs."""
    if is_pretrained(workdir):
        return pretrained_experiment(workdir)
    return _newest_readable(workdir, lambda ckpt, step, exp: exp)[0]


def load(workdir: str | Path, ema: bool = True) -> tuple[Experiment, object, int]:
    """``(experiment, params, step)``: the newest intact checkpoint's sampling parameters
    (``ema=False``: the live ones), laid out on the mesh the experiment declares. A newest step
    that is empty or damaged (a save cut short) is skipped with a warning, as ``train`` does;
    nothing in the workdir is moved (another process may be writing it)."""
    if is_pretrained(workdir):  # step 0: the folder's weights, laid out on the default mesh
        return pretrained_experiment(workdir), load_pretrained(workdir).params, 0
    def restore(ckpt, step, exp):
        mesh = make_mesh(exp.mesh.axes)
        abstract, _ = exp.method.abstract_state(mesh, exp.mesh.rules)
        fields = exp.method.sample_fields if ema else ("params",)
        out = ckpt.restore_subtree(step, {f: getattr(abstract, f) for f in fields})
        return exp.method.sample_params(SimpleNamespace(**out)) if ema else out["params"]

    exp, params, step = _newest_readable(workdir, restore)
    return exp, params, step


def _newest_readable(workdir, read):
    """``(experiment, read(ckpt, step, experiment), step)`` of the newest step that reads."""
    ckpt = _checkpointer(workdir)
    failures = []
    for step in sorted(ckpt.manager.all_steps(), reverse=True):
        try:
            exp = from_config(stored(ckpt.read_config(step)))
            out = read(ckpt, step, exp)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - an empty or damaged step: try an older one
            failures.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            continue
        for why in failures:
            print(f"warning: skipped checkpoint {why}", file=sys.stderr)
        return exp, out, step
    raise WorkdirError(f"no checkpoint in {ckpt.dir} reads back ({'; '.join(failures)}): "
                       "train again, or restore the folder from a copy")


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


def export_workdir(workdir: str | Path, out: str | Path) -> dict:
    """A run started with ``init_from=DIR`` (a pretrained folder) written back in DIR's format
    with its EMA parameters: a new diffusers folder / EDM export at ``out``."""
    exp = read_experiment(workdir)
    src = exp.config.get("init_from") or ""
    if not src or not is_pretrained(src):
        raise WorkdirError(f"{workdir} was not started from a pretrained folder: export writes "
                           "the format of its --config.init_from=DIR (a diffusers folder or an "
                           "EDM export)")
    _, params, step = load(workdir)
    fmt = "diffusers" if (Path(src) / "model_index.json").is_file() else "edm"
    export_folder(src, params, out, fmt)
    return {"out": str(out), "format": fmt, "from": str(src), "checkpoint_step": step}
