"""``python -m diffusion_jax {train,sample,bench-samplers}``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _split_overrides(argv):
    rest, overrides = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else rest).append(a)
    return rest, overrides


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    argv, overrides = _split_overrides(argv)
    ap = argparse.ArgumentParser(prog="python -m diffusion_jax")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a model (resumes from the workdir's checkpoints)")
    t.add_argument("--config", required=True)
    t.add_argument("--workdir", required=True)
    t.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host TPU pods; also "
                        "when JAX_COORDINATOR_ADDRESS is set)")
    s = sub.add_parser("sample", help="sample from a trained workdir")
    s.add_argument("--workdir", required=True)
    s.add_argument("--sampler", default=None)
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--grid", default=None)
    s.add_argument("--num", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.png", help=".png grid or .npz (float32 images)")
    b = sub.add_parser("bench-samplers", help="sampler accuracy vs NFE on exact-score problems")
    b.add_argument("--out", default="bench_out")
    b.add_argument("--nfe", default="5,8,10,15,20,50,100")
    b.add_argument("--samplers", default="")
    b.add_argument("--cases", default="ring2d,gmm64,image3072")
    b.add_argument("--batch", type=int, default=256)
    bt = sub.add_parser("bench-train", help="train-step throughput and FLOP utilisation")
    bt.add_argument("--config", required=True)
    bt.add_argument("--steps", type=int, default=10)
    tc = sub.add_parser("train-classifier", help="train the feature / guidance classifier")
    tc.add_argument("--config", required=True)
    tc.add_argument("--workdir", required=True)
    ev = sub.add_parser("eval", help="FD/KID/precision/recall of samplers x NFE")
    ev.add_argument("--workdir", required=True)
    ev.add_argument("--classifier", required=True, help="workdir of train-classifier")
    ev.add_argument("--samplers", default="ddim,dpmpp_2m,unipc,heun")
    ev.add_argument("--nfe", default="5,10,20")
    ev.add_argument("--num", type=int, default=2000)
    ev.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    if args.cmd == "train":
        from diffusion_jax.config import load_config
        from diffusion_jax.train.loop import train

        config = load_config(args.config, overrides)
        if args.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
            import jax

            jax.distributed.initialize()  # arguments come from the TPU / cluster environment
        out = train(config, args.workdir)
        return 0 if out["status"] in ("done", "preempted", "time_limit") else 1
    if args.cmd == "sample":
        return _sample(args)
    if args.cmd == "eval":
        from diffusion_jax.eval.sample_eval import evaluate

        evaluate(args.workdir, args.classifier, args.samplers.split(","),
                 [int(v) for v in args.nfe.split(",")], args.num, out=args.out)
        return 0
    if args.cmd == "train-classifier":
        from diffusion_jax.config import load_config
        from diffusion_jax.data import get_source
        from diffusion_jax.models.classifier import Classifier
        from diffusion_jax.processes import make_process
        from diffusion_jax.train.classifier import train_classifier

        c = load_config(args.config, overrides)
        model = Classifier(10, c.model.channels, c.model.feature_dim, c.model.noise_conditional)
        d = c.data.data_dir or None
        train_classifier(model, get_source(c.data.dataset, "train", d),
                         get_source(c.data.dataset, "test", d), c.train.steps, c.train.batch_size,
                         c.train.lr, c.seed, args.workdir,
                         make_process(c.process.name) if c.process.name else None,
                         c.data.random_flip)
        return 0
    if args.cmd == "bench-train":
        from diffusion_jax.bench.train import bench_train
        from diffusion_jax.config import load_config

        bench_train(load_config(args.config, overrides), args.steps)
        return 0
    from diffusion_jax.bench.samplers import run_benchmark

    run_benchmark(Path(args.out), [int(v) for v in args.nfe.split(",")],
                  [v for v in args.samplers.split(",") if v], args.cases.split(","), args.batch)
    return 0


def _sample(args) -> int:
    import jax
    import numpy as np
    from ml_collections import ConfigDict

    from diffusion_jax.parallel import make_mesh
    from diffusion_jax.train.checkpoint import Checkpointer
    from diffusion_jax.train.loop import build, data_shape, make_sample_fn
    from diffusion_jax.train.state import create_state
    from diffusion_jax.utils.images import save_grid, save_scatter

    ckpt = Checkpointer(args.workdir)
    if ckpt.latest_step() is None:
        raise SystemExit(f"no checkpoint in {ckpt.dir}: train first with "
                         f"`python -m diffusion_jax train --config ... --workdir {args.workdir}`")
    config = ConfigDict(ckpt.read_config())
    model, process, par, _, tx = build(config)
    mesh = make_mesh(dict(config.mesh))
    shape = data_shape(config)
    example = (jax.numpy.zeros((1,) + shape), jax.numpy.zeros((1,)))
    state, sh = create_state(model, tx, example, jax.random.key(0), mesh)
    abstract = jax.tree_util.tree_map(
        lambda x, shd: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shd), state, sh)
    step, state, _ = ckpt.restore(abstract)
    sc = config.sample
    fn = make_sample_fn(model, process, par, args.sampler or sc.sampler, args.steps or sc.num_steps,
                        args.grid or sc.grid)
    key = jax.random.key(args.seed)
    x_T = process.prior_sample(key, (args.num,) + shape)
    images = np.asarray(fn(state.ema_params, x_T, key))
    if args.out.endswith(".npz"):
        np.savez(args.out, images=images)
    elif images.ndim == 2:
        save_scatter(images, args.out)
    else:
        save_grid(images, args.out)
    print(json.dumps({"step": step, "out": args.out, "num": args.num}))
    return 0
