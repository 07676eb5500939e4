"""``python -m diffusion_jax VERB``: argparse and calls, nothing else.

Verbs:
  train           train any method from an experiment file (resumes from the workdir); the
                  classifier too (``experiments/fashion_mnist_classifier.py``)
  train-classifier  the same as ``train`` (kept for old command lines)
  sample          samples from a trained workdir, with guidance, inpainting, SDEdit, super-resolution
                  (diffusion); latent slerp rows and temperature (GAN / VAE / flow)
  eval            FD / KID / precision / recall of samplers x NFE budgets (one row for a GAN,
                  VAE or flow); FID against ``--ref-stats`` (mu/sigma .npz)
  experiments     the packaged experiments, by name (``--config NAME``), with one line each
  export          a run started from ``--config.init_from=DIR`` written back as DIR's format;
                  ``--format onnx|stablehlo``: a diffusion run's network, for deployment
  ref-stats       FID reference statistics of a test split or images (the .npz eval reads)
  likelihood      bits/dim on the test split (diffusion: PF-ODE; flow: exact; VAE: ELBO, IWAE)
  compare         the families side by side: FD, KID, precision/recall, class coverage,
                  bits/dim, parameters, training time, sampling speed (compare.md/json/png)
  optimize-grid   learn a sampler's time grid for a trained workdir (``sample --grid learned``)
  bench-samplers  sampler accuracy vs NFE on exact-score Gaussian mixtures
  bench-train     train-step throughput, FLOPs and memory of an experiment
  bench-compress  bytes, img/s and FD of quantised / pruned / low-rank / cached sampling

``sample``, ``eval``, ``likelihood``, ``optimize-grid`` and ``bench-samplers`` take
``--pretrained DIR`` (a diffusers folder or an EDM export, ``dj.load_pretrained``) in place of
``--workdir``.

Experiment values are overridden with ``--config.SECTION.KEY=VALUE``. User errors print one line
(``error: ...``) and exit 2; ``--debug`` shows the traceback. Exit codes of ``train``: 0 finished
(or stopped at its time limit), 143 preempted by SIGTERM, 130 interrupted by Ctrl-C (both saved
their last step: run the same command to continue), 1 failed (NaN loss, or NaN/inf in an output of
``sample``/``eval``/``likelihood``), 2 refused input; ``WORKDIR/status.json`` says the same.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
from pathlib import Path

import jax

from diffusion_jax.bench.sampler_bench import (CASES, MODEL_NFES, MODEL_SAMPLERS, model_pass,
                                               run_benchmark)
from diffusion_jax.bench.compress import bench_compress
from diffusion_jax.bench.network_speed import network_speed
from diffusion_jax.bench.train import PEERS, bench_train
from diffusion_jax.compress import MODES as COMPRESS_MODES
from diffusion_jax.config import describe_experiments, load_config
from diffusion_jax.eval.bpd import workdir_bits_per_dim
from diffusion_jax.eval.compare import compare
from diffusion_jax.eval.reference_stats import reference_stats, sha256
from diffusion_jax.eval.sample_eval import evaluate, training_fd
from diffusion_jax.deploy import FORMATS, export_network
from diffusion_jax.experiment import from_config
from diffusion_jax.generate import SampleRequest, generate
from diffusion_jax.pretrained import check_pretrained
from diffusion_jax.samplers import GRIDS, SAMPLERS, resolve_sampler, steps_for_budget, total_nfe
from diffusion_jax.samplers.learned_grid import MIN_CALIBRATION
from diffusion_jax.train.loop import EXIT_CODES, train
from diffusion_jax.utils.atomic import check_writable
from diffusion_jax.utils.flags import (choice, int_list, integer, name_list, number,
                                       usage_message)
from diffusion_jax.utils.images import save_output
from diffusion_jax.utils.interrupts import Interrupted, honoured_signals
from diffusion_jax.workdir import export_workdir
from diffusion_jax.workdir_grids import optimize_workdir_grid

GRID_NAMES = ("default", "learned", *GRIDS)
MIN_SAMPLES = 2  # KID, precision and recall compare pairs of samples

USER_ERRORS = (ValueError, KeyError, FileNotFoundError)


class UsageError(ValueError):
    """A command line argparse refuses: one line, exit 2 (argparse would print usage too)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(usage_message(message))


def _split_overrides(argv):
    rest, overrides = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else rest).append(a)
    return rest, overrides


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m diffusion_jax")
    ap.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for verb in ("train", "train-classifier"):
        _train_parser(sub.add_parser(verb, help="train an experiment (resumes from the workdir)"))
    _sample_parser(sub.add_parser("sample", help="sample from a trained workdir"))
    _eval_parser(sub.add_parser("eval", help="FD/KID/precision/recall (or FID against "
                                            "--ref-stats) of samplers x NFE"))
    sub.add_parser("experiments", help="the packaged experiments (--config NAME) and what each is")
    _export_parser(sub.add_parser("export", help="a run fine-tuned from a pretrained folder, "
                                                 "written back in that folder's format; with "
                                                 "--format, the network as ONNX or StableHLO"))
    _ref_stats_parser(sub.add_parser("ref-stats", help="FID reference statistics (mu, sigma) of "
                                                       "a dataset's test split or images"))
    _likelihood_parser(sub.add_parser("likelihood", help="bits/dim on the test split"))
    _compare_parser(sub.add_parser("compare", help="families side by side (any methods)"))
    _optimize_grid_parser(sub.add_parser(
        "optimize-grid", help="learn a time grid for a sampler and NFE (learned_pc: its "
        "coefficients too)"))
    _bench_samplers_parser(sub.add_parser(
        "bench-samplers", help="sampler accuracy vs NFE on exact-score problems"))
    _bench_train_parser(sub.add_parser("bench-train",
                                       help="train-step throughput and FLOP utilisation"))
    _bench_compress_parser(sub.add_parser(
        "bench-compress", help="bytes, img/s and FD of quantised, pruned, low-rank and cached "
                               "sampling on a trained diffusion workdir"))
    return ap


def _bench_compress_parser(b) -> None:
    b.add_argument("--workdir", required=True)
    b.add_argument("--classifier", required=True, help="classifier workdir (FD's features)")
    b.add_argument("--num", type=integer(MIN_SAMPLES), default=1000)
    b.add_argument("--nfe", type=integer(2), default=10)
    b.add_argument("--sampler", type=choice(SAMPLERS, "sampler"), default="unipc")
    b.add_argument("--batch", type=integer(1), default=64, help="the batch img/s is timed at")
    b.add_argument("--out", default="bench_out/compress")


def _grid_or_file(v: str) -> str:
    return v if v.endswith(".json") else choice(GRID_NAMES, "grid")(v)


def _source(p, required: bool = True, help: str | None = None) -> None:  # noqa: A002
    """``--workdir W`` (a trained run) or ``--pretrained DIR`` (a diffusers folder or an EDM
    export, ``dj.load_pretrained``): both land in ``args.workdir``."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--workdir", default=None, help=help)
    g.add_argument("--pretrained", metavar="DIR", default=None,
                   help="a pretrained folder instead of a workdir: diffusers (model_index.json, "
                        "unet/, scheduler/) or an EDM export (scripts/export_edm.py)")


def _train_parser(t) -> None:
    t.add_argument("--config", required=True)
    t.add_argument("--workdir", required=True)
    t.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host TPU pods; also "
                        "when JAX_COORDINATOR_ADDRESS is set)")
    t.add_argument("--restart", action="store_true",
                   help="start over: move the workdir's old content to "
                        "WORKDIR/previous_<time>/ (nothing is deleted)")


def _bench_samplers_parser(b) -> None:
    b.add_argument("--out", default="bench_out")
    b.add_argument("--nfe", type=int_list(2), default=None,
                   help="NFE budgets (default 5,8,10,15,20,50,100; with --workdir 4,5,6,8,10)")
    b.add_argument("--samplers", type=name_list(SAMPLERS, "sampler"), default=None)
    b.add_argument("--cases", type=name_list(CASES, "case"), default="ring2d,gmm64,image3072")
    b.add_argument("--batch", type=integer(1), default=256)
    b.add_argument("--goal-nfe", type=lambda v: int_list(2)(v) if v.strip() else [],
                   default="5,10",
                   help="NFEs of the goal table (best per variant: baseline, logsnr, default, "
                        "learned); empty to skip")
    b.add_argument("--learned", type=lambda v: name_list(SAMPLERS, "sampler")(v) if v.strip() else [],
                   default=None,
                   help="samplers that get a learned grid in the goal table (comma-separated; "
                        "default unipc,dpmpp_3m,ipndm_v,deis)")
    _source(b, required=False,
            help="instead of the exact-score cases: FD of a trained model at each --nfe, "
                 "default and learned grids (calibrating the missing ones), and NFE 20")
    b.add_argument("--classifier", default=None, help="feature extractor for --workdir's FD")
    b.add_argument("--inception", default=None, help="Inception-v3 weights .npz (FID)")
    b.add_argument("--ref-stats", default=None,
                   help="FID against these reference statistics (needed for --pretrained: a "
                        "pretrained folder has no test split)")
    b.add_argument("--num", type=integer(MIN_SAMPLES), default=1000,
                   help="samples per FD (--workdir)")
    b.add_argument("--calib-num", type=integer(MIN_CALIBRATION), default=64,
                   help="calibration draws per learned grid (--workdir)")
    b.add_argument("--calib-iters", type=integer(1), default=60, help="optimize-grid iterations")
    b.add_argument("--speed", action="store_true",
                   help="with --workdir/--pretrained: time one network call and one sampler run "
                        "(its overhead over NFE x one call) instead of measuring FD")
    b.add_argument("--peer", type=choice(PEERS, "peer"), default=None,
                   help="with --speed on a diffusers folder: diffusers' U-Net in torch on the "
                        "same weights, alternated")


def _bench_train_parser(bt) -> None:
    bt.add_argument("--config", required=True)
    bt.add_argument("--steps", type=integer(1), default=10)
    bt.add_argument("--peer", type=choice(PEERS, "peer"), default=None,
                    help="time a peer's implementation of the same U-Net alternately with ours "
                         "(torch: diffusers' UNet2DModel; needs torch and diffusers installed)")
    bt.add_argument("--rounds", type=integer(1), default=3,
                    help="with --peer: alternations of --steps steps each; medians are reported")
    bt.add_argument("--memory-only", action="store_true",
                    help="compile only: FLOPs and per-device memory for the experiment's mesh")


def _eval_parser(ev) -> None:
    _source(ev)
    ev.add_argument("--classifier", default=None,
                    help="classifier workdir: the feature extractor (and the judge of class "
                         "agreement for class-conditional models)")
    ev.add_argument("--inception", default=None,
                    help="Inception-v3 weights .npz (scripts/convert_fid_inception.py)")
    ev.add_argument("--guidance", type=number(), default=None)
    ev.add_argument("--samplers", type=name_list(SAMPLERS, "sampler"),
                    default="ddim,dpmpp_2m,unipc,heun")
    ev.add_argument("--nfe", type=int_list(1), default="5,10,20")
    ev.add_argument("--grids", type=name_list(GRID_NAMES, "grid"), default="default",
                    help="grid names, comma-separated; 'learned' uses the workdir's optimize-grid "
                         "results")
    ev.add_argument("--num", type=integer(MIN_SAMPLES), default=2000)
    ev.add_argument("--ref-stats", default=None,
                    help="FID against reference statistics: an .npz with mu and sigma (EDM's "
                         "fid.py ref, pytorch-fid, clean-fid, or the ref-stats command)")
    ev.add_argument("--prompts", default=None, metavar="FILE",
                    help="text-to-image: the prompts samples are made from (one per line, "
                         "cycled over --num; e.g. MS-COCO captions beside their reference stats)")
    ev.add_argument("--out", default=None)
    _compression_args(ev)


def _likelihood_parser(lk) -> None:
    _source(lk)
    lk.add_argument("--num", type=integer(1), default=512)
    lk.add_argument("--batch", type=integer(1), default=128)
    lk.add_argument("--trace", default="rademacher", choices=["rademacher", "gaussian", "exact"])
    lk.add_argument("--rtol", type=number(0.0, lo_open=True), default=1e-4)
    lk.add_argument("--atol", type=number(0.0, lo_open=True), default=1e-4)
    lk.add_argument("--seed", type=integer(0), default=0)
    lk.add_argument("--images", default=None,
                    help="a dataset whose test split is used instead of the experiment's "
                         "(needed with --pretrained), e.g. npz:test.npz or tfds:cifar10")
    lk.add_argument("--out", default=None)


def _compare_parser(cp) -> None:
    cp.add_argument("--workdirs", required=True, help="comma-separated workdirs")
    cp.add_argument("--classifier", required=True,
                    help="classifier workdir: the features of FD/KID/precision/recall and the "
                         "judge of class coverage")
    cp.add_argument("--num", type=integer(MIN_SAMPLES), default=2000, help="samples per model")
    cp.add_argument("--bpd-num", type=integer(0), default=256,
                    help="test images for bits/dim (0: skip the likelihoods)")
    cp.add_argument("--labels", default=None, help="comma-separated names for the rows")
    cp.add_argument("--out", default="compare")


def _optimize_grid_parser(og) -> None:
    _source(og)
    og.add_argument("--sampler", type=choice(("auto",) + tuple(SAMPLERS), "sampler"),
                    required=True,
                    help="a sampler, or 'auto': the learned solver and the learned grids of "
                         "unipc, dpmpp_3m, ipndm_v and deis, keeping the lowest held-out error")
    og.add_argument("--nfe", type=integer(2), required=True,
                    help="total NFE, the final call included")
    og.add_argument("--num", type=integer(MIN_CALIBRATION), default=64,
                    help="calibration noise draws (64 x 60 iterations: about 3 minutes for the "
                         "demo model on 2 CPU cores)")
    og.add_argument("--iters", type=integer(1), default=60)
    og.add_argument("--seed", type=integer(0), default=0)
    og.add_argument("--prompts", default=None, metavar="FILE",
                    help="text-to-image: calibrate on these prompts (one per line, cycled over "
                         "--num), at --guidance (the pipeline's default 7.5 if omitted)")
    og.add_argument("--guidance", type=number(), default=None,
                    help="calibrate the guided denoiser at this scale (class-conditional: "
                         "balanced labels; text-to-image: the prompts)")
    og.add_argument("--out", default=None,
                    help="write the grid to this .json instead of WORKDIR/grids/ (a read-only "
                         "pretrained folder); sample with --grid FILE.json")


def _sample_parser(s) -> None:
    _source(s)
    s.add_argument("--sampler", type=choice(SAMPLERS, "sampler"), default=None)
    s.add_argument("--steps", type=integer(1), default=None)
    s.add_argument("--nfe", type=integer(1), default=None,
                   help="instead of --steps: the total network evaluations (the final call "
                        "included) for --sampler")
    s.add_argument("--grid", type=_grid_or_file, default=None,
                   help="a grid name, 'learned' (see optimize-grid), or a grid file FILE.json "
                        "(optimize-grid --out FILE.json)")
    s.add_argument("--num", type=integer(1), default=None,
                   help="how many samples (default 64; with prompts, one per prompt)")
    s.add_argument("--batch", type=integer(1), default=256,
                   help="samples per compiled call: memory stays flat whatever --num is")
    s.add_argument("--seed", type=integer(0), default=0)
    s.add_argument("--out", default="samples.png",
                   help=".png grid, .npz (float32 images, labels) or .npy (float32 images, "
                        "written chunk by chunk as they are made)")
    s.add_argument("--labels", default=None, help="'all' (one row per class), 'K', or 'a,b,c,...'")
    _prompt_args(s)
    s.add_argument("--guidance", type=number(), default=None,
                   help="classifier-free guidance scale (0 unconditional, 1 conditional, >1 "
                        "guided; a text-to-image pipeline's default is diffusers' 7.5)")
    s.add_argument("--classifier", default=None, help="noise-conditional classifier workdir")
    s.add_argument("--classifier-scale", type=number(), default=1.0)
    s.add_argument("--init-image", default=None, help=".png, .npz/.npy, or 'test' (test split)")
    s.add_argument("--mask", default=None,
                   help="unknown region center|left|right|top|bottom|random, or a .png/.npy")
    s.add_argument("--resample", type=integer(1), default=1, help="RePaint resamplings per step")
    s.add_argument("--strength", type=number(0.0, 1.0), default=None,
                   help="SDEdit strength in [0, 1]")
    s.add_argument("--low-res", default=None, help="super-resolution input (.png/.npz) or 'test'")
    s.add_argument("--temperature", type=number(0.0), default=None,
                   help="flow / VAE: the latents' standard deviation (flow default: the "
                        "experiment's flow.temperature)")
    s.add_argument("--interpolate", type=integer(0), default=0,
                   help="GAN / VAE / flow: --num rows of this many images along slerp paths in "
                        "latent space (VAE/flow: between test images; GAN: random latents)")
    _compression_args(s)


def _compression_args(s) -> None:
    s.add_argument("--quantize", type=choice(tuple(COMPRESS_MODES), "--quantize mode"), default=None,
                   help="diffusion: sample with int8 or int4 weights (per output channel), or "
                        "int8 weights and activations (int8-act, emulated)")
    s.add_argument("--prune", type=number(), default=None,
                   metavar="SPARSITY", help="diffusion: zero this fraction of each conv/dense "
                                            "kernel's weights, the smallest first")
    s.add_argument("--low-rank", type=number(), default=None,
                   metavar="RATIO", help="diffusion: dense and 1x1 conv kernels as truncated-SVD "
                                         "factors keeping this fraction of their rank")
    s.add_argument("--cache-every", type=integer(1), default=None, metavar="K",
                   help="diffusion: step caching, the network at every K-th step (the others "
                        "reuse its last noise prediction); NFE counts the calls made")


def _compression(args) -> dict:
    return dict(quantize=args.quantize, prune=args.prune, low_rank=args.low_rank,
                cache_every=args.cache_every)


def _prompt_args(s) -> None:
    s.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="text-to-image: the prompt (repeat for one prompt per sample)")
    s.add_argument("--prompts", default=None, metavar="FILE",
                   help="text-to-image: a text file with one prompt per line")
    s.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="text-to-image: what guidance steers away from (default: the empty prompt)")
    s.add_argument("--invert", default=None, metavar="IMAGE",
                   help="start from this image's noise (DDIM / PF-ODE inversion with the same "
                        "deterministic sampler, steps and conditioning), not random noise: "
                        "the same prompt regenerates the image, an edited prompt edits it")


def _train(args, overrides) -> int:
    exp = from_config(load_config(args.config, overrides))
    if args.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()  # arguments come from the TPU / cluster environment
    periodic = training_fd(exp, args.workdir) if exp.train.fid_every else None
    out = train(exp, args.workdir, periodic, restart=args.restart)
    return EXIT_CODES[out["status"]]


def _sample(args, overrides) -> int:
    _no_overrides(overrides, "sample")
    check_writable(args.out, "--out", suffixes=(".png", ".npz", ".npy"))
    prompts = read_prompts(args.prompt, args.prompts)
    num = args.num or (len(prompts) if prompts else 64)
    steps = args.steps if args.nfe is None else steps_at_nfe(args.sampler, args.nfe, args.steps)
    req = SampleRequest(
        num=num, batch=args.batch, seed=args.seed, sampler=args.sampler, steps=steps,
        grid=args.grid, labels=args.labels, prompts=prompts,
        negative_prompt=args.negative_prompt, guidance=args.guidance, classifier=args.classifier,
        classifier_scale=args.classifier_scale, init_image=args.init_image, mask=args.mask,
        resample=args.resample, strength=args.strength, low_res=args.low_res, invert=args.invert,
        temperature=args.temperature, interpolate=args.interpolate, **_compression(args))
    g = generate(args.workdir, req, out=args.out)
    out = {"step": g.step, "out": args.out, "num": len(g.images)}
    out.update(save_output(args.out, g.images, g.inputs, g.nrow, g.labels))
    print(json.dumps(out))
    return 0


def steps_at_nfe(sampler: str | None, nfe: int, steps: int | None) -> int:
    """``--nfe N``: the sampler's steps whose total NFE (the final call included) is exactly N."""
    if steps is not None:
        raise ValueError("choose one of --steps and --nfe")
    if sampler is None:
        raise ValueError("--nfe needs --sampler (the steps an NFE buys depend on the sampler)")
    n = steps_for_budget(sampler, nfe)
    if n is None or total_nfe(sampler, n) != nfe:
        k = n or resolve_sampler(sampler).min_steps
        reach = sorted({total_nfe(sampler, k), total_nfe(sampler, k + 1)})
        raise ValueError(f"--nfe {nfe} is not reachable with {sampler} (the final denoising call "
                         f"counts): use --nfe {' or '.join(map(str, reach))}")
    return n


def read_prompts(given: list | None, path: str | None) -> tuple | None:
    """``--prompt`` (repeated) and ``--prompts FILE`` (one per line, blank lines skipped)."""
    if given and path:
        raise ValueError("choose one of --prompt and --prompts FILE")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"--prompts {path}: no such file (one prompt per line)")
        lines = tuple(line.strip() for line in p.read_text(encoding="utf-8").splitlines())
        lines = tuple(line for line in lines if line)
        if not lines:
            raise ValueError(f"--prompts {path} holds no prompt (one per line)")
        return lines
    return tuple(given) if given else None


def _eval(args, overrides) -> int:
    _no_overrides(overrides, "eval")
    if args.out is not None:
        check_writable(args.out, "--out", folder=True)
    if not args.classifier and not args.inception:
        raise ValueError("eval needs a feature extractor: --classifier DIR or --inception W.npz")
    evaluate(args.workdir, args.classifier, args.samplers, args.nfe, args.num, out=args.out,
             inception=args.inception, guidance=args.guidance, grids=args.grids,
             ref_stats=args.ref_stats, prompts=read_prompts(None, args.prompts),
             compression=_compression(args))
    return 0


def _ref_stats(args, overrides) -> int:
    _no_overrides(overrides, "ref-stats")
    check_writable(args.out, "--out")
    if not args.classifier and not args.inception:
        raise ValueError("ref-stats needs a feature extractor: --classifier DIR or --inception "
                         "W.npz (the one eval will use)")
    _, _, n = reference_stats(args.images, classifier=args.classifier, inception=args.inception,
                              out=args.out, channels=args.channels)
    print(json.dumps({"out": args.out, "num": n, "sha256": sha256(args.out)}))
    return 0


def _experiments(args, overrides) -> int:
    _no_overrides(overrides, "experiments")
    rows = describe_experiments()
    width = max(len(n) for n, _ in rows)
    for name, doc in rows:
        print(f"{name:<{width}}  {doc}")
    return 0


def _export(args, overrides) -> int:
    _no_overrides(overrides, "export")
    if args.format:
        check_writable(args.out, "--out")
        print(json.dumps(export_network(args.workdir, args.out, args.format, args.batch)))
        return 0
    print(json.dumps(export_workdir(args.workdir, args.out)))
    return 0


def _export_parser(e) -> None:
    _source(e, help="a run started with --config.init_from=DIR (a pretrained folder); with "
                    "--format, any diffusion run (or --pretrained DIR)")
    e.add_argument("--out", required=True, help="the new folder (DIR's format; must not exist), "
                                                "or with --format the file to write")
    e.add_argument("--format", choices=FORMATS, default=None,
                   help="the denoiser network alone, for deployment: stablehlo (jax.export) or "
                        "onnx (jax2onnx, installed beside: see the README); any diffusion run")
    e.add_argument("--batch", type=integer(1), default=1,
                   help="with --format: the batch the graph takes (fixed)")


def _ref_stats_parser(r) -> None:
    r.add_argument("--images", required=True,
                   help="a dataset name (its test split, e.g. fashion_mnist), a folder of PNGs, "
                        "or an .npy/.npz of images")
    r.add_argument("--classifier", default=None, help="classifier workdir (feature extractor)")
    r.add_argument("--inception", default=None, help="Inception-v3 weights .npz")
    r.add_argument("--channels", type=integer(1), default=None,
                   help="image channels of PNG/array inputs (default 3)")
    r.add_argument("--out", required=True, help="the .npz to write (mu, sigma, num)")


def _likelihood(args, overrides) -> int:
    _no_overrides(overrides, "likelihood")
    if args.out is not None:
        check_writable(args.out, "--out", suffixes=(".json",))
    workdir_bits_per_dim(args.workdir, args.num, args.batch, args.trace, rtol=args.rtol,
                         atol=args.atol, seed=args.seed, out=args.out, images=args.images)
    return 0


def _compare(args, overrides) -> int:
    _no_overrides(overrides, "compare")
    check_writable(args.out, "--out", folder=True)
    workdirs = [w for w in args.workdirs.split(",") if w]
    if not workdirs:
        raise ValueError(f"--workdirs {args.workdirs!r} names no workdir: give them separated "
                         "by commas")
    labels = args.labels.split(",") if args.labels else None
    if labels and len(labels) != len(workdirs):
        raise ValueError(f"--labels names {len(labels)} rows but --workdirs has "
                         f"{len(workdirs)}")
    compare(workdirs, args.classifier, args.num, args.out, args.bpd_num, labels)
    return 0


def _optimize_grid(args, overrides) -> int:
    _no_overrides(overrides, "optimize-grid")
    if args.out is not None:
        if not args.out.endswith(".json"):
            raise ValueError(f"--out {args.out}: a grid file ends in .json")
        check_writable(args.out, "--out")
    prompts = read_prompts(None, args.prompts)
    info = optimize_workdir_grid(args.workdir, args.sampler, args.nfe, args.num, args.iters,
                                 args.seed, out=args.out, prompts=prompts, guidance=args.guidance)
    print(json.dumps({k: v for k, v in info.items() if k != "ts"}))
    return 0


def _bench_train(args, overrides) -> int:
    bench_train(from_config(load_config(args.config, overrides)), args.steps, args.peer,
                args.memory_only, args.rounds)
    return 0


def _bench_samplers(args, overrides) -> int:
    _no_overrides(overrides, "bench-samplers")
    check_writable(args.out, "--out", folder=True)
    if args.workdir and args.speed:
        network_speed(args.workdir, Path(args.out), batch=min(args.batch, 64),
                      sampler=(args.samplers or ["unipc"])[0], nfe=(args.nfe or [10])[0],
                      peer=args.peer)
        return 0
    if args.workdir:
        if args.classifier is None and args.inception is None:
            raise ValueError("bench-samplers --workdir measures FD: pass --classifier (a "
                             "workdir of experiments/fashion_mnist_classifier.py) or --inception")
        model_pass(args.workdir, args.classifier, Path(args.out), args.samplers or MODEL_SAMPLERS,
                   args.nfe or MODEL_NFES, num=args.num, calib=args.calib_num,
                   iters=args.calib_iters, ref_stats=args.ref_stats, inception=args.inception)
        return 0
    run_benchmark(Path(args.out), args.nfe or [5, 8, 10, 15, 20, 50, 100], args.samplers or [],
                  args.cases, args.batch, goal_nfes=args.goal_nfe, learned=args.learned)
    return 0


def _bench_compress(args, overrides) -> int:
    _no_overrides(overrides, "bench-compress")
    check_writable(args.out, "--out", folder=True)
    bench_compress(args.workdir, args.classifier, Path(args.out), num=args.num, nfe=args.nfe,
                   sampler=args.sampler, batch=args.batch)
    return 0


def _no_overrides(overrides, verb: str) -> None:
    if overrides:
        raise ValueError(f"{overrides[0]}: {verb} reads the workdir's stored experiment; "
                         "--config.* overrides are for train and bench-train")


VERBS = {"train": _train, "train-classifier": _train, "sample": _sample, "eval": _eval,
         "likelihood": _likelihood, "compare": _compare, "optimize-grid": _optimize_grid,
         "bench-train": _bench_train, "bench-samplers": _bench_samplers,
         "bench-compress": _bench_compress,
         "ref-stats": _ref_stats, "export": _export, "experiments": _experiments}


def main(argv=None) -> int:
    """Parse, run the verb; user errors are one line and exit 2 (``--debug``: tracebacks)."""
    argv, overrides = _split_overrides(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        return _error(e, 2)
    with honoured_signals() as received:
        code = _guarded(VERBS[args.cmd], args, overrides)
    if received and code == 0:  # an interrupt swallowed on its way (a gc callback's)
        return _error(Interrupted(received[0]), 128 + received[0])
    return code


def _guarded(run, args, overrides) -> int:
    try:
        if getattr(args, "pretrained", None):  # checked as a folder, then read like a workdir
            check_pretrained(args.pretrained)
            args.workdir = args.pretrained
        return run(args, overrides)
    except Interrupted as e:
        return _error(e, e.code)
    except FloatingPointError as e:  # a run or an output that diverged: failed, not misused
        if args.debug:
            raise
        return _error(e, 1)
    except USER_ERRORS as e:
        if args.debug:
            raise
        if isinstance(e, FileNotFoundError) and e.filename:  # raised by the OS, not by us
            return _error(f"{e.filename} does not exist", 2)
        return _error(e.args[0] if isinstance(e, KeyError) and e.args else e, 2)
    except OSError as e:
        if args.debug or e.filename is None:  # not about a path the user gave: a bug
            raise
        return _error(os_error_message(e), 2)
    except MemoryError:
        if args.debug:
            raise
        return _error("this host ran out of memory: ask for fewer samples (--num, --batch) or "
                      "a smaller train.batch_size", 2)


def _error(msg, code: int) -> int:
    # "\r": a progress bar left mid-line (a signal inside a compile) does not swallow the start
    print(f"\rerror: {msg}", file=sys.stderr, flush=True)
    return code


def os_error_message(e: OSError) -> str:
    """What went wrong with which path, and what to do."""
    path = e.filename
    if isinstance(e, PermissionError):
        return f"permission denied: {path}: choose a folder you can write to (or fix its mode)"
    if isinstance(e, IsADirectoryError):
        return f"{path} is a folder: give a file name"
    if isinstance(e, NotADirectoryError):
        return f"{path}: part of this path is a file, not a folder: choose another path"
    if isinstance(e, FileExistsError):
        return f"{path} already exists and is not a folder: choose another path"
    if e.errno == errno.ENOSPC:
        return f"the disk is full (writing {path}): free some space or choose another folder"
    return f"{path}: {e.strerror or e}"


def run() -> None:
    """The program (``python -m diffusion_jax``, ``diffusion-jax``): ``main``'s exit code. After
    a signal the process ends at once (``os._exit``): XLA may still be running the program the
    signal stopped, and tearing the interpreter down under it can crash (seen: SIGSEGV)."""
    code = main()
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
