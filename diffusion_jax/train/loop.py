"""``train(experiment, workdir)``: the main job, top to bottom, for every method. The loop knows
no family: it creates the method's state sharded (or restores it), jits the method's pure
``train_step`` with shardings and donation, feeds it grain batches, and handles checkpoints with
the iterator state, resume, SIGTERM/SIGINT, the NaN stop, logging, preview grids and a time
limit. It also guards the workdir: a lock, ``status.json``, and no silent restart."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import jax
from tqdm import tqdm

from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.data import global_batch, image_pipeline
from diffusion_jax.data.sources import check_source, first_images, get_source
from diffusion_jax.experiment import Experiment
from diffusion_jax.parallel import batch_sharding, batch_size_per_shard, make_mesh
from diffusion_jax.train.lock import WorkdirLock
from diffusion_jax.train.logger import MetricLogger, read_history
from diffusion_jax.utils.images import plot_curve, save_grid, save_scatter

# ``periodic(params, step, key) -> dict``: extra figures every ``train.fid_every`` steps (the CLI
# passes the training-time FD of ``diffusion_jax.eval``; the loop does not import eval).
Periodic = Callable[[object, int, jax.Array], dict]

# How a run ended: ``status.json``'s "status" and the CLI's exit code. A preempted (SIGTERM) or
# interrupted (Ctrl-C) run saved its last step: run the same command to continue.
EXIT_CODES = {"done": 0, "time_limit": 0, "preempted": 143, "interrupted": 130, "nan": 1,
              "failed": 1}


def train(exp: Experiment, workdir: str, periodic: Periodic | None = None,
          restart: bool = False) -> dict:
    """Train ``exp`` in ``workdir``, resuming from its newest intact checkpoint. Refuses (before
    compiling) a workdir another trainer holds, checkpoints that none restores or that a
    differently shaped state wrote; ``restart=True`` moves the old content aside first."""
    workdir = Path(workdir)
    d = exp.data
    source = get_source(d.dataset, "train", d.data_dir or None, d.image_size)
    check_source(source, d.dataset, d.shape, d.num_classes)
    missing = [f for f in exp.method.example_fields if f not in source[0]]
    if missing:
        raise ValueError(f"dataset {d.dataset!r} has no {missing[0]!r} field, which this model "
                         "trains on: use 'captions:FOLDER' (images + metadata.jsonl) or an npz "
                         "with a 'captions' array")
    mesh = make_mesh(exp.mesh.axes)
    batch_size_per_shard(mesh, exp.train.batch_size)
    workdir.mkdir(parents=True, exist_ok=True)
    lock = WorkdirLock(workdir)
    if jax.process_index() == 0:
        lock.acquire()
    try:
        if restart:
            moved = move_aside(workdir)
            print(f"--restart: moved the old content of {workdir} to {moved}" if moved
                  else f"--restart: {workdir} holds nothing to move aside")
        return _train(exp, workdir, source, mesh, periodic)
    finally:
        lock.release()


def move_aside(workdir: Path) -> Path | None:
    """Everything in ``workdir`` (but the lock) into ``workdir/previous_<time>/``; nothing
    deleted. ``None`` (and no folder made) when there is nothing to move."""
    dest = workdir / f"previous_{time.strftime('%Y%m%d-%H%M%S')}"
    items = [p for p in workdir.iterdir()
             if p.name != "lock.json" and not p.name.startswith("previous_")]
    if not items:
        return None
    dest.mkdir()
    for p in items:
        shutil.move(str(p), str(dest / p.name))
    return dest


def _train(exp: Experiment, workdir: Path, source, mesh, periodic) -> dict:
    tc, method = exp.train, exp.method
    data_iter = iter(image_pipeline(source, tc.batch_size, exp.seed, exp.data.random_flip))
    k_init, k_train, k_sample = jax.random.split(jax.random.key(exp.seed), 3)
    abstract, shardings = method.abstract_state(mesh, exp.mesh.rules)
    ckpt = Checkpointer(workdir, tc.keep)
    restored = ckpt.restore(abstract, exp.config)
    if restored is not None:
        step0, state, data_state = restored
        data_iter.set_state(data_state)
        print(f"resumed from step {step0} in {workdir}")
    else:
        state = jax.jit(method.init, out_shardings=shardings)(k_init)
    step0 = int(state.step)
    bsh = batch_sharding(mesh)
    step_fn = jax.jit(method.train_step, in_shardings=(shardings, bsh, None),
                      out_shardings=(shardings, None), donate_argnums=(0,))
    stop = _Signals()
    log = MetricLogger(workdir, read_history(workdir, step0))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(abstract.params))
    print(f"{exp.method_name}: {n_params / 1e6:.2f}M parameters; mesh {dict(mesh.shape)}; "
          f"{tc.steps} steps of batch {tc.batch_size}")
    _write_status(workdir, "running", step0)
    bar = tqdm(total=tc.steps, initial=step0, desc="train", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    status, message, t_start, last = "done", "", time.time(), (time.time(), step0)
    # The iterator position that belongs to the state's step: taken right after each fetch, so
    # that a signal or error arriving anywhere (inside the fetch too) never saves a position
    # one batch ahead of the state.
    data_state = data_iter.get_state()
    try:
        for step in range(step0, tc.steps):
            batch = global_batch(method.host_batch(next(data_iter)), bsh)
            after = data_iter.get_state()
            # one statement: CPython runs signal handlers at calls and jumps, not between the
            # stores of an unpacking, so the state and its position change together
            state, metrics, data_state = *step_fn(state, batch, k_train), after
            done = step + 1
            # The loss is checked at every log step and before every checkpoint, so that a NaN
            # state is never saved even when ckpt_every is not a multiple of log_every.
            if done % tc.log_every == 0 or done == tc.steps or done % tc.ckpt_every == 0:
                m = {k: float(v) for k, v in metrics.items()}
                if not math.isfinite(m["loss"]):
                    status = "nan"
                    raise FloatingPointError(
                        f"loss is {m['loss']} at step {done}; stopping. The last good "
                        f"checkpoint (step {ckpt.latest_step()}) is kept in {ckpt.dir}")
                now = time.time()
                m.update(step=done, img_per_s=(done - last[1]) * tc.batch_size / (now - last[0]),
                         elapsed_s=now - t_start)
                last = (now, done)
                log.write(m)
                bar.set_postfix(loss=f"{m['loss']:.4f}", img_s=f"{m['img_per_s']:.0f}")
            bar.update(1)
            if done % tc.ckpt_every == 0:
                ckpt.save(done, state, data_state, exp.config)
            if periodic is not None and tc.fid_every and done % tc.fid_every == 0:
                row = periodic(method.sample_params(state), done, jax.random.fold_in(k_sample, done))
                log.write({"step": done, **row})
            if tc.sample_every and done % tc.sample_every == 0:
                write_preview(exp, method.sample_params(state), workdir,
                              f"samples_{done:06d}.png", k_sample, log, done)
            over_time = tc.time_limit_minutes and (time.time() - t_start) > 60 * tc.time_limit_minutes
            if stop.name is not None or over_time:
                status = stop.name or "time_limit"
                break
    except BaseException as e:
        status = status if status == "nan" else ("interrupted" if isinstance(e, KeyboardInterrupt)
                                                 else "failed")
        message = f"{type(e).__name__}: {e}"
        raise
    finally:
        bar.close()
        stop.restore()
        saved = _final_save(ckpt, state, data_state, exp.config, status)
        _write_status(workdir, status, saved, message)
    return _finish(exp, state, workdir, status, log, k_sample)


class _Signals:
    """SIGTERM (preemption) and a first Ctrl-C ask the loop to stop after the current step and
    save it; a second Ctrl-C interrupts at once (the last completed step is still saved)."""

    def __init__(self):
        self.name = None
        self.old = {}
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, sig, frame):
        if sig == signal.SIGINT and self.name == "interrupted":
            raise KeyboardInterrupt
        self.name = "preempted" if sig == signal.SIGTERM else "interrupted"
        if sig == signal.SIGINT:
            print("\ninterrupt: saving after this step (Ctrl-C again to stop at once)", flush=True)

    def restore(self):
        for s, h in self.old.items():
            signal.signal(s, h)


def _final_save(ckpt: Checkpointer, state, data_state, config, status: str) -> int | None:
    """Save the state's step unless it is already saved or the run diverged; returns the step
    the workdir now holds. Never raises over the error that ended the run."""
    try:
        step = int(state.step)
        if status != "nan" and ckpt.latest_step() != step:
            ckpt.save(step, state, data_state, config, force=True)
        ckpt.wait()
    except Exception as e:  # noqa: BLE001 - e.g. NaN weights, or buffers donated to a failed step
        print(f"warning: the final checkpoint was not written ({type(e).__name__}: {e}); the "
              f"last saved step is {ckpt.latest_step()}")
    return ckpt.latest_step()


def _write_status(workdir: Path, status: str, step, message: str = "") -> None:
    """``status.json``: what the run is doing or how it ended, and its exit code."""
    if jax.process_index() != 0:
        return
    row = {"status": status, "step": step, "exit_code": EXIT_CODES.get(status),
           "pid": os.getpid(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if message:
        row["message"] = message[:2000]
    tmp = workdir / "status.json.tmp"
    tmp.write_text(json.dumps(row, indent=1))
    tmp.replace(workdir / "status.json")


def _finish(exp: Experiment, state, workdir: Path, status: str, log: MetricLogger, key) -> dict:
    """Curves, the final preview grid and the method's own end-of-training figures."""
    method, d = exp.method, exp.data
    params = method.sample_params(state)
    out = {"status": status, "step": int(state.step), "workdir": str(workdir)}
    if status in ("done", "time_limit"):
        out.update(method.evaluate(params, lambda: get_source(d.dataset, "test",
                                                              d.data_dir or None, d.image_size)))
        if method.generates:
            out["samples"] = str(write_preview(exp, params, workdir, "samples.png", key, log,
                                               int(state.step)))
    if jax.process_index() == 0:
        for name, label in (("loss", "loss"), ("fd", "FD"), ("coverage", "class coverage")):
            rows = [h for h in log.history if name in h]
            if rows:
                plot_curve([h["step"] for h in rows], [h[name] for h in rows],
                           workdir / f"{name}.png", label)
        (workdir / "summary.json").write_text(json.dumps(out, indent=1))
    log.close()
    print(json.dumps(out))
    out["state"] = state  # for callers in Python (not part of the printed summary)
    return out


def write_preview(exp: Experiment, params, workdir, name: str, key, log: MetricLogger | None = None,
                  step: int = 0) -> Path:
    """The method's preview grid (``sample.num`` samples) as a PNG, and as a TensorBoard image."""
    d = exp.data
    test_images = lambda n: first_images(
        get_source(d.dataset, "test", d.data_dir or None, d.image_size), n, d.shape)
    images, nrow = exp.method.preview(params, key, exp.sample.num, test_images)
    path = Path(workdir) / name
    if jax.process_index() == 0:
        save_scatter(images, path) if images.ndim == 2 else save_grid(images, path, nrow=nrow)
        if log is not None and images.ndim == 4:
            log.image("samples", path, step)
    return path
