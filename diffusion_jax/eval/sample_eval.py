"""``eval``: sample a trained workdir with several samplers x NFE budgets and score the samples
with classifier features (FD, KID, precision/recall, Inception-style score) against the test split.

    python -m diffusion_jax eval --workdir runs/fm --classifier runs/classifier \
        --samplers ddim,dpmpp_2m,unipc,heun --nfe 5,10,20 --num 2000
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot, no backend switch

from diffusion_jax.data import get_source
from diffusion_jax.data.pipeline import image_batches
from diffusion_jax.eval import metrics as M
from diffusion_jax.eval.features import Extractor, classifier_extractor, make_extractor
from diffusion_jax.eval.reference_stats import read_stats
from diffusion_jax.experiment import Experiment
from diffusion_jax.generate import SampleRequest, check_compression, run_chunks, sampling_env
from diffusion_jax.utils.atomic import atomic_path, write_json, write_text
from diffusion_jax.utils.images import save_figure
from diffusion_jax.utils.memory import check_fits
from diffusion_jax.workdir import load, read_experiment


def reference_features(extractor: Extractor, exp: Experiment, cache: Path | None = None) -> np.ndarray:
    """The test split's features (cached as ``.npz`` next to the results, no pickle)."""
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as f:
            if str(f["extractor"]) == extractor.name:
                return f["features"]
    test = get_source(exp.data.dataset, "test", exp.data.data_dir or None, exp.data.image_size)
    feats = np.concatenate([extractor(x)[0] for x, _ in image_batches(test, 1000)])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            np.savez(tmp, features=feats, extractor=np.array(extractor.name))
    return feats


def sample_images(method, params, num: int, key, batch: int = 250, sample_fn=None) -> np.ndarray:
    """``num`` samples in [-1, 1] in batches (``method.sample``, or ``sample_fn(params, key, n)``)."""
    out = []
    for i in range(0, num, batch):
        k, n = jax.random.fold_in(key, i), min(batch, num - i)
        x = np.asarray(sample_fn(params, k, n, i) if sample_fn else method.sample(params, k, n))
        if not np.all(np.isfinite(x)):  # clipping would hide it; features of NaN are NaN
            raise FloatingPointError(f"samples {i}..{i + n - 1} hold NaN/inf: the parameters or "
                                     "the sampler diverged")
        out.append(np.clip(x, -1, 1))
    return np.concatenate(out)


def training_fd(exp: Experiment, workdir: str | Path):
    """The loop's ``periodic`` hook for ``train.fid_every``: FD of ``train.fid_num`` samples (the
    experiment's sampler; balanced labels for class-conditional models) against the test split,
    with the extractor of ``train.fid_classifier`` / ``train.fid_inception``. With a classifier
    of the data's classes it also logs mode coverage (``coverage``, ``class_entropy``,
    ``max_class_fraction``) of one fixed batch of latents, and flags a collapsed model."""
    tc = exp.train
    extractor = make_extractor(tc.fid_classifier or None, tc.fid_inception or None)
    real = reference_features(extractor, exp, Path(workdir) / "eval" / "reference_features.npz")
    fixed = jax.random.key(exp.seed + 1)  # the same latents every time: a curve, not noise

    def hook(params, step, key) -> dict:
        feats, probs = extractor(sample_images(exp.method, params, tc.fid_num, fixed))
        row = {"fd": M.fd_from_features(feats, real), "fd_num": tc.fid_num,
               "extractor": extractor.name}
        msg = f"step {step}: FD {row['fd']:.3f} ({tc.fid_num} samples, {extractor.name})"
        if probs.shape[1] == exp.data.num_classes:
            cov = M.class_coverage(probs)
            row.update(coverage=cov["coverage"], class_entropy=cov["entropy"],
                       max_class_fraction=cov["max_fraction"], class_histogram=cov["histogram"])
            msg += f"; class coverage {cov['coverage']:.2f}, entropy {cov['entropy']:.3f}"
            if cov["collapsed"]:
                msg += (f"\nWARNING: mode collapse at step {step}: class {cov['top_class']} holds "
                        f"{100 * cov['max_fraction']:.0f}% of the samples")
        print(msg, flush=True)
        return row

    return hook


def _settings(method, samplers, nfes, grids, guidance, prompts, num: int) -> list:
    """The method's eval rows; a text-to-image model's each on the prompts (cycled over
    ``num``), at the pipeline's guidance unless one is given."""
    text = method.takes_prompts
    if text != bool(prompts):
        raise ValueError("a text-to-image model is evaluated on prompts you give: pass --prompts "
                         "FILE (one per line, cycled over --num)" if text else
                         "--prompts is for text-to-image models; this one has no text encoder")
    settings = method.eval_requests(samplers, nfes, grids, None if text else guidance)
    if not text:
        return settings
    g = guidance if guidance is not None else method.guidance
    cycled = tuple(np.resize(np.array(prompts, dtype=object), num))
    print("note: no CLIP score: a diffusers text-to-image folder carries CLIP's text tower only "
          "(the image tower it needs is not in it); FD/FID is reported")
    return [({**row, "guidance": g}, dataclasses.replace(req, prompts=cycled, guidance=g))
            for row, req in settings]


def evaluate(workdir: str, classifier_dir: str | None, samplers, nfes, num: int, batch: int = 500,
             out: str | None = None, inception: str | None = None,
             guidance: float | None = None, grids=("default",),
             ref_stats: str | None = None, prompts=None,
             compression: dict | None = None) -> list[dict]:
    """The method's eval rows (diffusion: samplers x NFE x grids; a consistency model: one row
    per NFE; a one-call family: one row) -> FD, KID, precision/recall, class score (and, for
    class-conditional models, the fraction of samples the classifier assigns to the requested
    class). ``grids``: grid names, or ``"learned"`` (the workdir's ``optimize-grid`` results;
    a sampler x NFE without one is skipped with a note). ``ref_stats``: an ``.npz`` of ``mu``/
    ``sigma`` (EDM's ``fid.py ref``, pytorch-fid, clean-fid): FID against it, reported with the
    sample count and the file's SHA-256, instead of FD/KID/precision/recall against the test
    split. ``compression``: ``{"quantize", "prune", "low_rank", "cache_every"}`` request
    fields applied to every row (the rows name them; a cached row's ``nfe`` is the calls made)."""
    exp = read_experiment(workdir)
    stats = read_stats(ref_stats) if ref_stats else None
    if stats is None and not exp.data.dataset:
        raise ValueError(f"{workdir} is a pretrained model with no test split to compare with: "
                         "pass --ref-stats FILE (an .npz of mu/sigma, e.g. from EDM's fid.py ref "
                         "or `python -m diffusion_jax ref-stats`)")
    method = exp.method
    if not method.generates:
        raise ValueError(f"{workdir} holds a {exp.method_name!r} run, which makes no samples")
    settings = _compressed(method, _settings(method, samplers, nfes, grids, guidance, prompts,
                                             num), compression, workdir)
    check_fits(min(num, batch), method.sample_shape, f"--num {num}", copies=2)  # one chunk: streamed
    k = method.num_classes
    if k and not classifier_dir:
        raise ValueError("a class-conditional model is judged by a classifier: pass --classifier")
    check_fits(num, (2,), f"--num {num}", bytes_per_value=8)  # labels, keys per row (planning)
    env = sampling_env(exp, workdir)
    plans = []
    for row, req in settings:
        try:
            plans.append((row, method.sampling(dataclasses.replace(req, num=num, batch=batch),
                                               env)))
        except FileNotFoundError:
            print(f"note: no learned grid for {row['sampler']} at NFE {row['nfe']}; skipped")
    if not plans:
        raise ValueError(f"no eval row can run for {workdir}: {', '.join(map(str, samplers))} at "
                         f"NFE {', '.join(map(str, nfes))} on grids {', '.join(grids)}: each is "
                         "below its sampler's minimum NFE or has no learned grid (nothing was "
                         "written)")
    extractor = make_extractor(classifier_dir, inception)
    dim = extractor.check(method.sample_shape)
    check_fits(num, (dim,), f"--num {num}")  # the samples' features are kept (KID, recall)
    exp, params, step = load(workdir)
    judge = classifier_extractor(classifier_dir) if k else None
    out = Path(out or Path(workdir) / "eval")
    real_feats = None if stats else reference_features(extractor, exp, out / "reference_features.npz")
    rows = []
    for row, plan in plans:
        row = {**_eval_row(plan, params, extractor, judge, real_feats, stats), **row,
               "extractor": extractor.name, "checkpoint_step": step}
        rows.append(row)
        print(json.dumps({k_: round(v, 4) if isinstance(v, float) else v
                          for k_, v in row.items()}))
    _write(rows, out, extractor, num, stats or len(real_feats), step, guidance if k else None)
    return rows


def _compressed(method, settings: list, compression: dict | None, workdir) -> list:
    """The rows with the compression request fields set (named in each row; a cached row's
    ``nfe`` is the calls it makes)."""
    if not compression or all(v is None for v in compression.values()):
        return settings
    check_compression(method, SampleRequest(**compression), workdir)
    tag = {k: v for k, v in compression.items() if v is not None}
    return [({**row, **tag, "nfe": method.nfe(dataclasses.replace(req, **compression))},
             dataclasses.replace(req, **compression)) for row, req in settings]


def _eval_row(plan, params, extractor, judge, real_feats, stats=None) -> dict:
    """FD (or, against reference statistics, FID), KID, precision/recall and class score of the
    plan's samples (seed 0). Samples stream through the extractor chunk by chunk: only their
    features are kept. ``seconds`` is the sampling time alone."""
    feats, probs, preds, spent = [], [], [], [0.0]

    def take(start, chunk):
        t = time.perf_counter()
        x = np.clip(chunk, -1, 1)  # after run_chunks' NaN check
        f, pr = extractor(x)
        if stats is not None and f.shape[1] != len(stats.mu):
            raise ValueError(f"{stats.path} holds {len(stats.mu)}-d statistics but the extractor "
                             f"({extractor.name}) gives {f.shape[1]}-d features: use the "
                             "extractor the statistics were made with")
        feats.append(f)
        probs.append(pr)
        if judge is not None and plan.labels is not None:
            preds.append(np.argmax(judge(x)[1], axis=1))
        spent[0] += time.perf_counter() - t

    t0 = time.perf_counter()
    run_chunks(plan, params, 0, on_chunk=take)
    secs = time.perf_counter() - t0 - spent[0]
    feats, probs = np.concatenate(feats), np.concatenate(probs)
    row = {"num": len(feats), "class_score": M.inception_score(probs)[0], "seconds": secs}
    if stats is not None:
        row.update(fid=M.frechet_distance(*M.feature_stats(feats), stats.mu, stats.sigma),
                   ref_stats=stats.path, ref_sha256=stats.sha256)
    else:
        kid_m, kid_s = M.kid(feats, real_feats, 20, min(1000, len(feats)))
        p, r = M.precision_recall(real_feats[:len(feats)], feats)
        row.update(fd=M.fd_from_features(feats, real_feats), kid=kid_m, kid_std=kid_s,
                   precision=p, recall=r)
    if preds:
        row["agreement"] = float(np.mean(np.concatenate(preds) == plan.labels))
    return row


def _write(rows, out: Path, extractor, num, real, step, guidance) -> None:
    """``eval.json``, ``eval.md`` and the FD-vs-NFE plot; ``real``: the test split's size, or the
    reference statistics (``Stats``) that FID was measured against."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", rows)
    agree = guidance is not None or any("agreement" in r for r in rows)
    if isinstance(real, int):
        head = (f"FD/KID with the {extractor.name}, {num} samples vs the {real}-image test "
                f"split; checkpoint step {step}")
        cols = ["FD", "KID", "precision", "recall"]
        vals = lambda r: [f"{r['fd']:.3f}", f"{r['kid']:.4f}", f"{r['precision']:.3f}",
                          f"{r['recall']:.3f}"]
    else:
        head = (f"FID with the {extractor.name}, {num} samples vs the reference statistics "
                f"{real.path} (sha256 {real.sha256}); checkpoint step {step}")
        cols, vals = ["FID"], lambda r: [f"{r['fid']:.3f}"]
    cols = ["sampler", "grid", "NFE"] + cols + (["class agreement"] if agree else []) + ["s"]
    lines = [head + (f"; guidance {guidance}" if agree else "") + "\n",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join([str(r["sampler"]), str(r["grid"]), str(r["nfe"]), *vals(r)]
                                + ([f"{r['agreement']:.3f}"] if agree else [])
                                + [f"{r['seconds']:.1f}"]) + " |" for r in rows]
    write_text(out / "eval.md", "\n".join(lines) + "\n")
    _plot(rows, out / "fd_vs_nfe.png")


def _plot(rows, path):

    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for s, g in dict.fromkeys((r["sampler"], r["grid"]) for r in rows):
        pts = [(r["nfe"], r.get("fd", r.get("fid"))) for r in rows if (r["sampler"], r["grid"]) == (s, g)]
        ax.plot(*zip(*pts), marker="o", ls="--" if g == "learned" else "-",
                label=s if g == "default" else f"{s} ({g})")
    ax.set_xscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("FID" if "fid" in rows[0] else "FD")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
