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
    s.add_argument("--labels", default=None,
                   help="class-conditional models: 'all' (one row per class), 'K', or 'a,b,c,...'")
    s.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (0 unconditional, 1 conditional, >1 guided)")
    s.add_argument("--classifier", default=None,
                   help="workdir of a noise-conditional classifier: classifier guidance")
    s.add_argument("--classifier-scale", type=float, default=1.0)
    s.add_argument("--init-image", default=None,
                   help="image(s) for --mask / --strength: .png, .npz/.npy, or 'test' (test split)")
    s.add_argument("--mask", default=None,
                   help="inpaint: unknown region center|left|right|top|bottom|random, or a "
                        ".png/.npy (white/1 = known)")
    s.add_argument("--resample", type=int, default=1,
                   help="with --mask: RePaint resamplings per step (1: replacement, any sampler)")
    s.add_argument("--strength", type=float, default=None,
                   help="SDEdit / img2img from --init-image: 0 returns it, 1 ignores it")
    s.add_argument("--low-res", default=None,
                   help="super-resolution models: low-res image(s) (.png/.npz) or 'test'")
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
    ev.add_argument("--classifier", default=None,
                    help="workdir of train-classifier: the feature extractor (and the judge of "
                         "class agreement for class-conditional models)")
    ev.add_argument("--inception", default=None,
                    help="Inception-v3 weights .npz (scripts/convert_fid_inception.py): FID "
                         "features instead of the classifier's")
    ev.add_argument("--guidance", type=float, default=None,
                    help="classifier-free guidance scale for class-conditional models")
    ev.add_argument("--samplers", default="ddim,dpmpp_2m,unipc,heun")
    ev.add_argument("--nfe", default="5,10,20")
    ev.add_argument("--num", type=int, default=2000)
    ev.add_argument("--out", default=None)
    lk = sub.add_parser("likelihood", help="bits/dim on the test split (PF-ODE, dequantised)")
    lk.add_argument("--workdir", required=True)
    lk.add_argument("--num", type=int, default=512)
    lk.add_argument("--batch", type=int, default=128)
    lk.add_argument("--trace", default="rademacher", choices=["rademacher", "gaussian", "exact"])
    lk.add_argument("--rtol", type=float, default=1e-4)
    lk.add_argument("--seed", type=int, default=0)
    lk.add_argument("--out", default=None)
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

        if not args.classifier and not args.inception:
            raise SystemExit("eval needs a feature extractor: --classifier DIR (train-classifier) "
                             "or --inception WEIGHTS.npz")
        evaluate(args.workdir, args.classifier, args.samplers.split(","),
                 [int(v) for v in args.nfe.split(",")], args.num, out=args.out,
                 inception=args.inception, guidance=args.guidance)
        return 0
    if args.cmd == "likelihood":
        from diffusion_jax.eval.bpd import test_bits_per_dim

        test_bits_per_dim(args.workdir, args.num, args.batch, args.trace, args.rtol, args.rtol,
                          args.seed, args.out)
        return 0
    if args.cmd == "train-classifier":
        from diffusion_jax.config import load_config
        from diffusion_jax.data import get_source
        from diffusion_jax.models.classifier import Classifier
        from diffusion_jax.processes import make_process
        from diffusion_jax.train.classifier import train_classifier

        c = load_config(args.config, overrides)
        # A process makes it a guidance classifier: noisy inputs, so it must see t.
        model = Classifier(10, c.model.channels, c.model.feature_dim,
                           bool(c.process.name) or c.model.noise_conditional,
                           head=c.model.get("head", "mean"))
        d = c.data.data_dir or None
        train_classifier(model, get_source(c.data.dataset, "train", d),
                         get_source(c.data.dataset, "test", d), c.train.steps, c.train.batch_size,
                         c.train.lr, c.seed, args.workdir,
                         make_process(c.process.name) if c.process.name else None,
                         c.data.random_flip, c.process.name or None, c.train.get("shift", 0))
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
    import jax.numpy as jnp
    import numpy as np

    from diffusion_jax.conditioning import downsample
    from diffusion_jax.data import get_source
    from diffusion_jax.data.sources import first_images
    from diffusion_jax.experiment import conditioning, data_shape
    from diffusion_jax.generate import (load_workdir, make_repaint_fn, make_sample_fn,
                                        make_sdedit_fn, workdir_config)
    from diffusion_jax.utils.images import load_images, make_mask, save_grid, save_scatter

    # Flag combinations first: nothing is loaded or compiled for a command that cannot run.
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        raise SystemExit(f"--strength must be in [0, 1], got {args.strength}")
    if (args.strength is not None or args.mask) and not args.init_image:
        raise SystemExit("--mask and --strength edit an image: pass --init-image FILE (or 'test')")
    if args.strength is not None and args.mask:
        raise SystemExit("choose one of --mask (inpainting) and --strength (SDEdit)")
    if args.resample != 1 and not args.mask:
        raise SystemExit("--resample is RePaint's option for inpainting: pass --mask too")
    if args.resample < 1:
        raise SystemExit(f"--resample must be >= 1, got {args.resample}")
    config = workdir_config(args.workdir)  # the checks below need only the config
    shape, cc = data_shape(config), conditioning(config)
    test = lambda: get_source(config.data.dataset, "test", config.data.data_dir or None)
    n, nrow, cond = args.num, None, {}
    classifier = None
    if args.classifier:
        from diffusion_jax.train.classifier import load_classifier

        clf, cparams, info = load_classifier(args.classifier, with_info=True)
        if not info["noise_conditional"]:
            raise SystemExit(f"the classifier in {args.classifier} was trained on clean images; "
                             "classifier guidance needs a noise-conditional one (train-classifier "
                             "with --config.process.name=" + config.process.name + ")")
        if info.get("process") not in (None, config.process.name):
            raise SystemExit(f"the classifier was trained on process {info['process']!r} but the "
                             f"model uses {config.process.name!r}: their times do not match")
        log_prob = lambda x, t: jax.nn.log_softmax(
            clf.apply({"params": cparams}, x, jnp.broadcast_to(t, x.shape[:1])))
        classifier = (log_prob, args.classifier_scale, info["num_classes"])
    if args.labels is not None:
        k = cc.num_classes or (classifier[2] if classifier else 0)
        if not k:
            raise SystemExit("--labels needs a class-conditional model (this one was trained with "
                             "model.conditional=False) or a guidance --classifier")
        if args.labels == "all":
            per = max(n // k, 1)
            n, nrow, y = per * k, per, np.repeat(np.arange(k), per)
        else:
            vals = [int(v) for v in args.labels.split(",")]
            bad = [v for v in vals if not 0 <= v < k]
            if bad:
                raise SystemExit(f"labels {bad} out of range: this model has classes 0..{k - 1}")
            y = np.resize(np.array(vals), n)
        cond["y"] = jnp.asarray(y, jnp.int32)
    elif args.guidance is not None or classifier is not None:
        raise SystemExit("guidance needs --labels (e.g. --labels all)")
    if args.guidance is not None and not cc.num_classes:
        raise SystemExit("--guidance (classifier-free) needs a class-conditional model; this one "
                         "has no class conditioning. Use --classifier DIR for classifier guidance")
    inputs = None
    if cc.low_res_size:
        if not args.low_res:
            raise SystemExit(f"this is a super-resolution model ({cc.low_res_size} -> {shape[0]}): "
                             "pass --low-res FILE or --low-res test")
        if args.low_res == "test":
            low = np.asarray(downsample(jnp.asarray(first_images(test(), n, shape)), cc.low_res_size))
        else:
            low = load_images(args.low_res, shape[-1])
            if low.shape[1] != cc.low_res_size:
                raise SystemExit(f"--low-res images are {low.shape[1]}x{low.shape[2]}; this model "
                                 f"takes {cc.low_res_size}x{cc.low_res_size}")
            n = len(low) if len(low) > 1 else n
            low = np.resize(low, (n,) + low.shape[1:])
        cond["low_res"] = jnp.asarray(low)
        inputs = np.asarray(jax.image.resize(low, (n,) + shape, "nearest"))
    elif args.low_res:
        raise SystemExit("--low-res is for super-resolution models; this model has "
                         "model.low_res_size=0")
    if "y" in cond and len(cond["y"]) != n:
        cond["y"] = jnp.resize(cond["y"], (n,))
    init = None
    if args.init_image:
        if args.init_image == "test":
            init = first_images(test(), n, shape)
        else:
            init = load_images(args.init_image, shape[-1])
            if init.shape[1:] != tuple(shape):
                raise SystemExit(f"--init-image is {init.shape[1:]}, the model makes {tuple(shape)}")
            init = np.resize(init, (n,) + init.shape[1:])
    config, model, process, par, state, step = load_workdir(args.workdir)
    sc = config.sample
    sampler, steps, grid = args.sampler or sc.sampler, args.steps or sc.num_steps, args.grid or sc.grid
    key = jax.random.key(args.seed)
    params = state.ema_params
    if args.mask:
        mask = make_mask(args.mask, shape, args.seed)
        inputs = init * mask + (1 - mask) * 0.0  # unknown pixels shown mid-grey
        if args.resample > 1:
            fn = make_repaint_fn(model, process, par, steps, args.resample, grid, args.guidance)
            images = fn(params, jnp.asarray(init), jnp.asarray(mask), key, cond or None)
        else:
            fn = make_sample_fn(model, process, par, sampler, steps, grid, args.guidance, classifier)
            x_T = process.prior_sample(key, (n,) + shape)
            images = fn(params, x_T, key, cond or None, jnp.asarray(init), jnp.asarray(mask))
    elif args.strength is not None:
        inputs = init
        fn = make_sdedit_fn(model, process, par, sampler, steps, grid, args.strength, args.guidance)
        images = fn(params, jnp.asarray(init), key, cond or None)
    else:
        fn = make_sample_fn(model, process, par, sampler, steps, grid, args.guidance, classifier)
        x_T = process.prior_sample(key, (n,) + shape)
        images = fn(params, x_T, key, cond or None)
    images = np.asarray(images)
    out = {"step": step, "out": args.out, "num": n}
    if args.out.endswith(".npz"):
        np.savez(args.out, images=images, **({"labels": np.asarray(cond["y"])} if "y" in cond else {}))
    elif images.ndim == 2:
        save_scatter(images, args.out)
    else:
        save_grid(images, args.out, nrow=nrow)
        if inputs is not None:
            out["inputs"] = str(Path(args.out).with_name(Path(args.out).stem + "_input.png"))
            save_grid(inputs, out["inputs"], nrow=nrow)
    print(json.dumps(out))
    return 0
