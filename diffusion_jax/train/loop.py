"""``train(experiment, workdir)``: the main job, top to bottom, for every method. The loop knows
no family: it creates the method's state sharded (or restores it), jits the method's pure
``train_step`` with shardings and donation, feeds it grain batches, and handles checkpoints with
the iterator state, resume, SIGTERM, the NaN stop, logging, preview grids and a time limit."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Callable

import jax
from tqdm import tqdm

from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.data import global_batch, image_pipeline
from diffusion_jax.data.sources import first_images, get_source
from diffusion_jax.experiment import Experiment
from diffusion_jax.parallel import batch_sharding, batch_size_per_shard, make_mesh
from diffusion_jax.train.logger import MetricLogger, read_history
from diffusion_jax.utils.images import plot_curve, save_grid, save_scatter

# ``periodic(params, step, key) -> dict``: extra figures every ``train.fid_every`` steps (the CLI
# passes the training-time FD of ``diffusion_jax.eval``; the loop does not import eval).
Periodic = Callable[[object, int, jax.Array], dict]


def train(exp: Experiment, workdir: str, periodic: Periodic | None = None) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tc, method = exp.train, exp.method
    mesh = make_mesh(exp.mesh.axes)
    batch_size_per_shard(mesh, tc.batch_size)
    d = exp.data
    data_iter = iter(image_pipeline(get_source(d.dataset, "train", d.data_dir or None),
                                    tc.batch_size, exp.seed, d.random_flip))
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
    stop = {"sig": None}
    old = signal.signal(signal.SIGTERM, lambda sig, frame: stop.update(sig=sig))
    log = MetricLogger(workdir, read_history(workdir, step0))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(method.sample_params(abstract)))
    print(f"{exp.method_name}: {n_params / 1e6:.2f}M parameters; mesh {dict(mesh.shape)}; "
          f"{tc.steps} steps of batch {tc.batch_size}")
    bar = tqdm(total=tc.steps, initial=step0, desc="train", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    status, t_start, last = "done", time.time(), (time.time(), step0)
    try:
        for step in range(step0, tc.steps):
            state, metrics = step_fn(state, global_batch(next(data_iter), bsh), k_train)
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
                ckpt.save(done, state, data_iter.get_state(), exp.config)
            if periodic is not None and tc.fid_every and done % tc.fid_every == 0:
                row = periodic(method.sample_params(state), done, jax.random.fold_in(k_sample, done))
                log.write({"step": done, **row})
            if tc.sample_every and done % tc.sample_every == 0:
                write_preview(exp, method.sample_params(state), workdir,
                              f"samples_{done:06d}.png", k_sample, log, done)
            over_time = tc.time_limit_minutes and (time.time() - t_start) > 60 * tc.time_limit_minutes
            if stop["sig"] is not None or over_time:
                status = "preempted" if stop["sig"] is not None else "time_limit"
                break
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, old)
        if status != "nan" and ckpt.latest_step() != int(state.step):
            ckpt.save(int(state.step), state, data_iter.get_state(), exp.config, force=True)
        ckpt.wait()
    return _finish(exp, state, workdir, status, log, k_sample)


def _finish(exp: Experiment, state, workdir: Path, status: str, log: MetricLogger, key) -> dict:
    """Curves, the final preview grid and the method's own end-of-training figures."""
    method, d = exp.method, exp.data
    params = method.sample_params(state)
    out = {"status": status, "step": int(state.step), "workdir": str(workdir)}
    if status in ("done", "time_limit"):
        out.update(method.evaluate(params, lambda: get_source(d.dataset, "test", d.data_dir or None)))
        if method.generates:
            out["samples"] = str(write_preview(exp, params, workdir, "samples.png", key, log,
                                               int(state.step)))
    if jax.process_index() == 0:
        for name, label in (("loss", "loss"), ("fd", "FD")):
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
    test_images = lambda n: first_images(get_source(d.dataset, "test", d.data_dir or None), n,
                                         d.shape)
    images, nrow = exp.method.preview(params, key, exp.sample.num, test_images)
    path = Path(workdir) / name
    if jax.process_index() == 0:
        save_scatter(images, path) if images.ndim == 2 else save_grid(images, path, nrow=nrow)
        if log is not None and images.ndim == 4:
            log.image("samples", path, step)
    return path
