"""Orbax checkpoints: train state + grain iterator state + the experiment config (JSON), in one
step directory. Data, never code: nothing is pickled. Used by training (save, resume) and by the
workdir reader (config, parameters only)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp

# Config entries that decide the shapes and meaning of the train state: a checkpoint written
# with different values cannot be resumed (sections, or single dotted keys).
COMPAT_KEYS = ("method", "model", "process", "parameterization", "data.image_size",
               "data.channels", "data.dim", "data.num_classes", "optimizer.grad_accum")


class Checkpointer:
    def __init__(self, workdir: str | Path, max_to_keep: int = 3):
        self.dir = Path(workdir).absolute() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def save(self, step: int, state, data_state: dict, config: dict, force: bool = False):
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config)), force=force)

    def wait(self):
        self.manager.wait_until_finished()

    def latest_step(self):
        return self.manager.latest_step()

    def restore(self, abstract_state, config: dict | None = None):
        """Restore the newest readable checkpoint into ``abstract_state`` (whose shardings decide
        the layout: a checkpoint restores onto any mesh). Falls back to older steps if the newest
        is unreadable. Returns ``(step, state, data_state)`` or ``None`` if there is none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                stored_cfg = self.manager.restore(step, args=ocp.args.Composite(
                    config=ocp.args.JsonRestore()))["config"]
                if config is not None:
                    check_compatible(stored_cfg, config, self.dir / str(step))
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                return step, out["state"], out["data"]
            except IncompatibleCheckpoint:
                raise
            except Exception as e:  # noqa: BLE001 - a truncated step: say so, try the previous
                logging.warning("checkpoint at step %d is unreadable (%s: %s); trying an older one",
                                step, type(e).__name__, str(e)[:200])
                print(f"warning: checkpoint step {step} is unreadable ({type(e).__name__}); "
                      "falling back to the previous one")
        return None

    def restore_subtree(self, step: int, abstract: dict) -> dict:
        """Only the named fields of the saved state (e.g. ``{"ema_params": abstract}`` for
        sampling: no optimizer state is read), into ``abstract``'s shardings."""
        reader = ocp.CheckpointManager(self.dir, item_handlers={
            "state": ocp.PyTreeCheckpointHandler()})
        args = ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                      restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
        return reader.restore(step, args=ocp.args.Composite(state=args))["state"]

    def read_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"]


class IncompatibleCheckpoint(ValueError):
    pass


def check_compatible(stored: dict, current: dict, where) -> None:
    diffs = []
    for k in COMPAT_KEYS:
        a, b = _flat(_get(stored, k), k), _flat(_get(current, k), k)
        diffs += [f"{key}: checkpoint {a.get(key)!r} vs config {b.get(key)!r}"
                  for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    if diffs:
        raise IncompatibleCheckpoint(
            f"the checkpoint in {where} was written by an incompatible config:\n  "
            + "\n  ".join(diffs) + "\nUse a new --workdir, or the checkpoint's settings.")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


def _flat(d, prefix):
    if not isinstance(d, dict):
        return {prefix: json.loads(json.dumps(d))}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}"))
    return out
