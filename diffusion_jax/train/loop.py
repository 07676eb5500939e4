"""``train(config, workdir)``: the main job, top to bottom. The config is read here and in
``diffusion_jax.experiment``, nowhere below: everything this calls takes typed arguments."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from diffusion_jax.conditioning import downsample
from diffusion_jax.data import global_batch, image_pipeline
from diffusion_jax.data.sources import first_images, get_source
from diffusion_jax.eval.features import make_extractor
from diffusion_jax.eval.sample_eval import reference_features, sample_fd
from diffusion_jax.experiment import build, conditioning, data_shape, example_inputs
from diffusion_jax.generate import make_sample_fn
from diffusion_jax.parallel import batch_sharding, batch_size_per_shard, make_mesh
from diffusion_jax.train.checkpoint import Checkpointer
from diffusion_jax.train.state import create_state
from diffusion_jax.train.step import make_train_step
from diffusion_jax.utils.images import plot_curve, save_grid, save_scatter


def train(config, workdir: str) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tc = config.train
    if tc.get("fid_every") and not (tc.get("fid_classifier") or tc.get("fid_inception")):
        raise ValueError(f"train.fid_every={tc.fid_every} needs a feature extractor: set "
                         "train.fid_classifier=DIR (train-classifier) or train.fid_inception=W.npz")
    mesh = make_mesh(dict(config.mesh))
    batch_size_per_shard(mesh, tc.batch_size)
    model, process, par, loss_cfg, tx = build(config)
    source = get_source(config.data.dataset, "train", config.data.data_dir or None)
    data = image_pipeline(source, tc.batch_size, config.seed, config.data.random_flip)
    data_iter = iter(data)

    key = jax.random.key(config.seed)
    k_init, k_train, k_sample = jax.random.split(key, 3)
    state, shardings = create_state(model, tx, example_inputs(config), k_init, mesh)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    ckpt = Checkpointer(workdir, tc.keep)
    cfg_dict = json.loads(config.to_json())
    restored = ckpt.restore(jax.tree_util.tree_map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state, shardings),
        cfg_dict)
    if restored is not None:
        step0, state, data_state = restored
        data_iter.set_state(data_state)
        print(f"resumed from step {step0} in {workdir}")
    step0 = int(state.step)

    bsh = batch_sharding(mesh)
    step_fn = jax.jit(make_train_step(model, process, par, loss_cfg, tx, tc.ema_decay,
                                      tc.ema_start, conditioning(config)),
                      in_shardings=(shardings, bsh, None), out_shardings=(shardings, None),
                      donate_argnums=(0,))
    stop = {"sig": None}
    old = signal.signal(signal.SIGTERM, lambda sig, frame: stop.update(sig=sig))
    log_path = workdir / "metrics.jsonl"
    history = _read_history(log_path, step0)
    if jax.process_index() == 0:  # drop rows logged after the checkpoint we resumed from
        log_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    t_start, last_t, last_step = time.time(), time.time(), step0
    print(f"model: {n_params / 1e6:.2f}M parameters; mesh {dict(mesh.shape)}; "
          f"{tc.steps} steps of batch {tc.batch_size}")
    bar = tqdm(total=tc.steps, initial=step0, desc="train", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    status, fid = "done", None
    try:
        for step in range(step0, tc.steps):
            batch = global_batch(next(data_iter), bsh)
            state, metrics = step_fn(state, batch, k_train)
            # Check the loss at every log step and before every checkpoint, so that a NaN state
            # is never saved even when ckpt_every is not a multiple of log_every.
            if ((step + 1) % tc.log_every == 0 or step + 1 == tc.steps
                    or (step + 1) % tc.ckpt_every == 0):
                m = {k: float(v) for k, v in metrics.items()}
                if not math.isfinite(m["loss"]):
                    status = "nan"
                    raise FloatingPointError(
                        f"loss is {m['loss']} at step {step + 1}; stopping. The last good "
                        f"checkpoint (step {ckpt.latest_step()}) is kept in {ckpt.dir}")
                now = time.time()
                m.update(step=step + 1, img_per_s=(step + 1 - last_step) * tc.batch_size / (now - last_t),
                         elapsed_s=now - t_start)
                last_t, last_step = now, step + 1
                history.append(m)
                if jax.process_index() == 0:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(m) + "\n")
                bar.set_postfix(loss=f"{m['loss']:.4f}", img_s=f"{m['img_per_s']:.0f}")
            bar.update(1)
            if (step + 1) % tc.ckpt_every == 0:
                ckpt.save(step + 1, state, data_iter.get_state(), cfg_dict)
            if tc.get("fid_every") and (step + 1) % tc.fid_every == 0:
                fid = fid or _fid_setup(config, workdir)
                fd = sample_fd(config, model, process, par, state.ema_params, fid[0], fid[1],
                               tc.fid_num, jax.random.fold_in(k_sample, step + 1))
                row = {"step": step + 1, "fd": fd, "fd_num": tc.fid_num, "extractor": fid[0].name}
                history.append(row)
                if jax.process_index() == 0:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                tqdm.write(f"step {step + 1}: FD {fd:.3f} ({tc.fid_num} samples, {fid[0].name})")
            if tc.sample_every and (step + 1) % tc.sample_every == 0:
                write_samples(config, model, process, par, state.ema_params, workdir,
                              f"samples_{step + 1:06d}.png", k_sample)
            over_time = tc.time_limit_minutes and (time.time() - t_start) > 60 * tc.time_limit_minutes
            if stop["sig"] is not None or over_time:
                status = "preempted" if stop["sig"] is not None else "time_limit"
                break
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, old)
        if status != "nan" and ckpt.latest_step() != int(state.step):
            ckpt.save(int(state.step), state, data_iter.get_state(), cfg_dict, force=True)
        ckpt.wait()
    if history and jax.process_index() == 0:
        rows = [h for h in history if "loss" in h]
        plot_curve([h["step"] for h in rows], [h["loss"] for h in rows], workdir / "loss.png")
        fds = [h for h in history if "fd" in h]
        if fds:
            plot_curve([h["step"] for h in fds], [h["fd"] for h in fds], workdir / "fd.png", "FD")
    out = {"status": status, "step": int(state.step), "workdir": str(workdir)}
    if status in ("done", "time_limit"):
        out["samples"] = str(write_samples(config, model, process, par, state.ema_params, workdir,
                                           "samples.png", k_sample))
    print(json.dumps(out))
    out["state"] = state  # for callers in Python (not part of the printed summary)
    return out


def write_samples(config, model, process, par, params, workdir, name, key):
    """A grid of ``config.sample.num`` samples; class-conditional models get one row per class
    (at ``config.sample.guidance``), super-resolution models upsample test images."""
    sc = config.sample
    shape = data_shape(config)
    cond = conditioning(config)
    n, nrow, kw = sc.num, None, {}
    if cond.num_classes:
        per = max(n // cond.num_classes, 1)
        n, nrow = per * cond.num_classes, per
        kw["cond"] = {"y": jnp.repeat(jnp.arange(cond.num_classes), per)}
    if cond.low_res_size:
        test = get_source(config.data.dataset, "test", config.data.data_dir or None)
        hi = first_images(test, n, shape)
        kw["cond"] = {**kw.get("cond", {}), "low_res": downsample(jnp.asarray(hi), cond.low_res_size)}
    if cond.context_dim:
        raise ValueError("sample writing for context-conditioned models needs contexts; set "
                         "train.sample_every=0 and sample with your own contexts")
    guide = sc.get("guidance", None) if cond.num_classes else None
    fn = make_sample_fn(model, process, par, sc.sampler, sc.num_steps, sc.grid,
                        guidance_scale=guide)
    x_T = process.prior_sample(key, (n,) + shape)
    images = np.asarray(fn(params, x_T, key, **kw))
    path = Path(workdir) / name
    if jax.process_index() == 0:
        save_scatter(images, path) if images.ndim == 2 else save_grid(images, path, nrow=nrow)
    return path


def _fid_setup(config, workdir):
    """The extractor (``train.fid_classifier`` workdir or ``train.fid_inception`` weights) and the
    test split's features, computed once and cached in ``workdir/eval``."""
    tc = config.train
    extractor = make_extractor(tc.get("fid_classifier") or None, tc.get("fid_inception") or None)
    return extractor, reference_features(extractor, config,
                                         Path(workdir) / "eval" / "reference_features.npz")


def _read_history(path: Path, upto: int) -> list:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto]
