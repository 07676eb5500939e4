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
from diffusion_jax.experiment import Experiment
from diffusion_jax.generate import run_chunks, sampling_env
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
    test = get_source(exp.data.dataset, "test", exp.data.data_dir or None)
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


def evaluate(workdir: str, classifier_dir: str | None, samplers, nfes, num: int, batch: int = 500,
             out: str | None = None, inception: str | None = None,
             guidance: float | None = None, grids=("default",)) -> list[dict]:
    """The method's eval rows (diffusion: samplers x NFE x grids; a consistency model: one row
    per NFE; a one-call family: one row) -> FD, KID, precision/recall, class score (and, for
    class-conditional models, the fraction of samples the classifier assigns to the requested
    class). ``grids``: grid names, or ``"learned"`` (the workdir's ``optimize-grid`` results;
    a sampler x NFE without one is skipped with a note)."""
    exp = read_experiment(workdir)
    method = exp.method
    if not method.generates:
        raise ValueError(f"{workdir} holds a {exp.method_name!r} run, which makes no samples")
    settings = method.eval_requests(samplers, nfes, grids, guidance)  # checked before any work
    check_fits(num, method.sample_shape, f"--num {num}", copies=2)  # the samples and clipped
    k = method.num_classes
    if k and not classifier_dir:
        raise ValueError("a class-conditional model is judged by a classifier: pass --classifier")
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
    exp, params, step = load(workdir)
    extractor = make_extractor(classifier_dir, inception)
    judge = classifier_extractor(classifier_dir) if k else None
    out = Path(out or Path(workdir) / "eval")
    real_feats = reference_features(extractor, exp, out / "reference_features.npz")
    rows = []
    for row, plan in plans:
        row = {**_eval_row(plan, params, extractor, judge, real_feats), **row,
               "extractor": extractor.name, "checkpoint_step": step}
        rows.append(row)
        print(json.dumps({k_: round(v, 4) if isinstance(v, float) else v
                          for k_, v in row.items()}))
    _write(rows, out, extractor, num, len(real_feats), step, guidance if k else None)
    return rows


def _eval_row(plan, params, extractor, judge, real_feats) -> dict:
    """FD, KID, precision/recall and class score of the plan's samples (seed 0)."""
    t0 = time.perf_counter()
    images = np.clip(run_chunks(plan, params, 0), -1, 1)  # after the NaN check
    secs = time.perf_counter() - t0
    num = len(images)
    feats, probs = extractor(images)
    kid_m, kid_s = M.kid(feats, real_feats, 20, min(1000, num))
    p, r = M.precision_recall(real_feats[:num], feats)
    row = {"num": num, "fd": M.fd_from_features(feats, real_feats), "kid": kid_m,
           "kid_std": kid_s, "precision": p, "recall": r,
           "class_score": M.inception_score(probs)[0], "seconds": secs}
    if judge is not None and plan.labels is not None:
        pred = np.argmax(judge(images)[1], axis=1)
        row["agreement"] = float(np.mean(pred == plan.labels))
    return row


def _write(rows, out: Path, extractor, num, n_real, step, guidance) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", rows)
    agree = guidance is not None or any("agreement" in r for r in rows)
    lines = [f"FD/KID with the {extractor.name}, {num} samples vs the {n_real}-image "
             f"test split; checkpoint step {step}"
             + (f"; guidance {guidance}" if agree else "") + "\n",
             "| sampler | grid | NFE | FD | KID | precision | recall |"
             + (" class agreement |" if agree else "") + " s |",
             "|---|---|---|---|---|---|---|---|" + ("---|" if agree else "")]
    lines += [f"| {r['sampler']} | {r['grid']} | {r['nfe']} | {r['fd']:.3f} | {r['kid']:.4f} | {r['precision']:.3f} "
              f"| {r['recall']:.3f} |" + (f" {r['agreement']:.3f} |" if agree else "")
              + f" {r['seconds']:.1f} |" for r in rows]
    write_text(out / "eval.md", "\n".join(lines) + "\n")
    _plot(rows, out / "fd_vs_nfe.png")


def _plot(rows, path):

    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for s, g in dict.fromkeys((r["sampler"], r["grid"]) for r in rows):
        pts = [(r["nfe"], r["fd"]) for r in rows if (r["sampler"], r["grid"]) == (s, g)]
        ax.plot(*zip(*pts), marker="o", ls="--" if g == "learned" else "-",
                label=s if g == "default" else f"{s} ({g})")
    ax.set_xscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("FD (classifier features)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
