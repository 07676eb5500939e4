"""Orbax checkpoints: train state + grain iterator state + the experiment config (JSON), in one
step directory. Data, never code: nothing is pickled. Used by training (save, resume) and by the
workdir reader (config, parameters only)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

# Config entries that decide the shapes and meaning of the train state: a checkpoint written
# with different values cannot be resumed (sections, or single dotted keys).
COMPAT_KEYS = ("method", "model", "process", "parameterization", "data.image_size",
               "data.channels", "data.dim", "data.num_classes", "optimizer.grad_accum")
# Entries that change what a resumed run means without changing the state's shapes: allowed,
# with a note (a different batch size or seed makes the stored data position a different place
# in the data; a different step count or optimizer reshapes the schedule from here on).
NOTE_KEYS = ("seed", "data.dataset", "train.batch_size", "train.steps", "optimizer")


class Checkpointer:
    """Saves and restores one workdir's checkpoints. Every save stores a fingerprint of each array
    (``fingerprints``) and refuses a state that holds NaN/inf; every restore recomputes and
    compares them, so a flipped byte or a truncated file is caught, not trained on. Damaged steps
    are moved to ``<workdir>/quarantine`` once an older step has restored (so later saves at those
    steps happen and ``keep`` counts only good ones); when none restores, nothing is moved and
    ``restore`` raises ``CheckpointError`` listing each step and why."""

    def __init__(self, workdir: str | Path, max_to_keep: int = 3):
        self.workdir = Path(workdir).absolute()
        self.dir = self.workdir / "checkpoints"
        self.max_to_keep = max_to_keep
        self._open()

    def _open(self):
        self.manager = ocp.CheckpointManager(
            self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True))

    def save(self, step: int, state, data_state: dict, config: dict, force: bool = False):
        sums, bad = fingerprints(state)
        if bad:
            raise FloatingPointError(f"not saving step {step}: {_names(bad)} hold NaN/inf "
                                     f"(the last good checkpoint, step {self.latest_step()}, is kept)")
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config), integrity=ocp.args.JsonSave({"fingerprints": sums})),
            force=force)

    def wait(self):
        self.manager.wait_until_finished()

    def latest_step(self):
        return self.manager.latest_step()

    def restore(self, abstract_state, config: dict | None = None, note=print):
        """Restore the newest checkpoint that reads back intact into ``abstract_state`` (whose
        shardings decide the layout: a checkpoint restores onto any mesh). Returns ``(step,
        state, data_state)``, or ``None`` when there is no checkpoint at all. A config whose
        state-shaping fields differ (``COMPAT_KEYS``), or a state tree of other shapes, raises
        ``IncompatibleCheckpoint`` before anything is read; fields that change meaning but not
        shape (``NOTE_KEYS``) are allowed with a ``note``."""
        failures = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                stored_cfg = self.read_config(step)
            except Exception as e:  # noqa: BLE001 - unreadable: damaged, try an older step
                failures.append((step, f"config unreadable ({type(e).__name__}: {_short(e)})"))
                continue
            if config is not None:
                check_compatible(stored_cfg, config, self.dir / str(step))
            try:
                self._check_tree(step, abstract_state)
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                self._verify(step, out["state"])
            except IncompatibleCheckpoint:
                raise
            except Exception as e:  # noqa: BLE001 - a damaged step: say so, try the previous
                failures.append((step, f"{type(e).__name__}: {_short(e)}"))
                note(f"warning: checkpoint step {step} is unreadable or damaged "
                     f"({failures[-1][1]}); trying an older one")
                continue
            if config is not None:
                for line in meaning_changes(stored_cfg, config):
                    note(f"note: {line}")
            for bad_step, why in failures:
                where = self.quarantine(bad_step, why)
                note(f"warning: moved damaged checkpoint step {bad_step} to {where}")
            return step, out["state"], out["data"]
        if failures:
            raise CheckpointError(
                f"no checkpoint in {self.dir} restores, and nothing was changed: "
                + "; ".join(f"step {s}: {why}" for s, why in failures)
                + ". To keep them and start over, pass --restart (moves the workdir's content "
                "aside), or use a new --workdir")
        return None

    def _check_tree(self, step: int, abstract_state) -> None:
        """The stored arrays' names and shapes against the state to restore (metadata only)."""
        reader = ocp.CheckpointManager(self.dir, item_handlers={
            "state": ocp.StandardCheckpointHandler()})
        meta = reader.item_metadata(step)["state"]
        describe = lambda tree: {k: f"{v.dtype}{list(v.shape)}"
                                 for k, v in _named_leaves(tree).items()}
        stored, want = describe(meta.tree), describe(abstract_state)
        diffs = [f"{k}: checkpoint {stored.get(k, 'absent')} vs now {want.get(k, 'absent')}"
                 for k in sorted(set(stored) | set(want)) if stored.get(k) != want.get(k)]
        if diffs:
            raise IncompatibleCheckpoint(
                f"the checkpoint in {self.dir / str(step)} holds a differently shaped state "
                f"({len(diffs)} arrays differ):\n  " + "\n  ".join(diffs[:8])
                + "\nUse a new --workdir, or the checkpoint's settings.")

    def _stored_fingerprints(self, step: int) -> dict | None:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(
                integrity=ocp.args.JsonRestore()))["integrity"]["fingerprints"]
        except Exception:  # noqa: BLE001 - written before fingerprints existed: finite check only
            return None

    def _verify(self, step: int, state) -> None:
        stored = self._stored_fingerprints(step)
        sums, bad = fingerprints(state)
        if bad:
            raise ValueError(f"{_names(bad)} hold NaN/inf")
        if stored is not None:
            wrong = [k for k in sorted(set(sums) | set(stored)) if sums.get(k) != stored.get(k)]
            if wrong:
                raise ValueError(f"fingerprint mismatch in {_names(wrong)} (bytes changed on disk)")

    def verify_subtree(self, step: int, tree: dict) -> None:
        """Check restored fields (e.g. ``{"ema_params": ...}``) against the step's fingerprints."""
        stored = self._stored_fingerprints(step) or {}
        sums, bad = fingerprints(tree)
        wrong = bad + [k for k in sums if k in stored and stored[k] != sums[k]]
        if wrong:
            raise CheckpointError(f"checkpoint step {step} in {self.dir} is damaged: "
                                  f"{_names(wrong)} hold NaN/inf or differ from what was saved")

    def quarantine(self, step: int, why: str) -> Path:
        """Move a damaged step out of ``checkpoints/`` (never deleted), with the reason beside it."""
        qdir = self.workdir / "quarantine"
        dest = qdir / f"step_{step}_{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:  # one mover on a shared filesystem; the others wait
            qdir.mkdir(exist_ok=True)
            shutil.move(str(self.dir / str(step)), str(dest))
            (dest / "REASON.txt").write_text(why + "\n")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"quarantine {step}")
        self._open()  # the manager caches its list of steps
        return dest

    def restore_subtree(self, step: int, abstract: dict) -> dict:
        """Only the named fields of the saved state (e.g. ``{"ema_params": abstract}`` for
        sampling: no optimizer state is read), into ``abstract``'s shardings, verified."""
        reader = ocp.CheckpointManager(self.dir, item_handlers={
            "state": ocp.PyTreeCheckpointHandler()})
        args = ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                      restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
        out = reader.restore(step, args=ocp.args.Composite(state=args))["state"]
        self.verify_subtree(step, out)
        return out

    def read_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"]


class CheckpointError(ValueError):
    """Checkpoints exist but none can be used; the message lists each and why."""


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


def meaning_changes(stored: dict, current: dict) -> list[str]:
    """One line per ``NOTE_KEYS`` entry that differs between a checkpoint and the config."""
    out = []
    for k in NOTE_KEYS:
        a, b = _flat(_get(stored, k), k), _flat(_get(current, k), k)
        out += [f"resuming with {key}={b.get(key)!r} (the checkpoint was written with "
                f"{a.get(key)!r})" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    return out


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _named_leaves(tree) -> dict:
    """``{"params/conv/kernel": leaf}``: the same names for a TrainState and for orbax's metadata
    of it (which stores dataclasses and named tuples as dicts)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in flat}


def _as_words(x):
    """The array's bits as uint32 words (one per element), for the fingerprint."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32)


@jax.jit
def _fingerprint_arrays(leaves):
    sums, finite = [], []
    for x in leaves:
        w = _as_words(x)
        # position-weighted sum mod 2**32 with odd weights: any change of a single word changes
        # it; exact integer arithmetic, so the value does not depend on the mesh or device order
        idx = jnp.zeros(w.shape, jnp.uint32)
        for d in range(w.ndim):
            idx = idx * jnp.uint32(w.shape[d]) + jax.lax.broadcasted_iota(jnp.uint32, w.shape, d)
        sums.append(jnp.sum(w * (2 * idx + 1), dtype=jnp.uint32))
        finite.append(jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
                      else jnp.bool_(True))
    return sums, finite


def fingerprints(tree) -> tuple[dict, list]:
    """``({name: uint32 fingerprint}, [names of arrays holding NaN/inf])`` of a pytree of arrays,
    computed on device (sharded arrays are not gathered)."""
    named = _named_leaves(tree)
    sums, finite = _fingerprint_arrays(list(named.values()))
    # replicated scalars: this process's copy (also on multi-host meshes)
    local = lambda v: np.asarray(v.addressable_data(0))
    names = list(named)
    return ({k: int(local(v)) for k, v in zip(names, sums)},
            [k for k, ok in zip(names, finite) if not local(ok)])


def _names(keys: list) -> str:
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:160]
