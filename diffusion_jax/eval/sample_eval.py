"""``eval``: sample a trained workdir with several samplers x NFE budgets and score the samples
with classifier features (FD, KID, precision/recall, Inception-style score) against the test split.

    python -m diffusion_jax eval --workdir runs/fm --classifier runs/classifier \
        --samplers ddim,dpmpp_2m,unipc,heun --nfe 5,10,20 --num 2000
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.data import get_source
from diffusion_jax.data.pipeline import image_batches
from diffusion_jax.eval import metrics as M
from diffusion_jax.eval.features import Extractor, classifier_extractor, make_extractor
from diffusion_jax.experiment import Experiment
from diffusion_jax.learned_grids import load_learned
from diffusion_jax.methods.diffusion import Diffusion
from diffusion_jax.samplers import steps_for_budget
from diffusion_jax.workdir import load


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
        np.savez(cache, features=feats, extractor=np.array(extractor.name))
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
    """Samplers x NFE x grids -> FD, KID, precision/recall, class score (and, for
    class-conditional models, the fraction of samples the classifier assigns to the requested
    class). ``grids``: grid names, or ``"learned"`` (the workdir's ``optimize-grid`` results;
    a sampler x NFE without one is skipped with a note)."""
    exp, params, step = load(workdir)
    method = exp.method
    if not getattr(method, "generates", False):
        raise ValueError(f"{workdir} holds a {exp.method_name!r} run, which makes no samples")
    extractor = make_extractor(classifier_dir, inception)
    judge = classifier_extractor(classifier_dir) if classifier_dir else None
    # GAN / VAE / flow / consistency methods here are unconditional: no conditioning field
    k = getattr(getattr(method, "conditioning", None), "num_classes", 0)
    if k and judge is None:
        raise ValueError("a class-conditional model is judged by a classifier: pass --classifier")
    out = Path(out or Path(workdir) / "eval")
    real_feats = reference_features(extractor, exp, out / "reference_features.npz")
    rows = []
    if not isinstance(method, Diffusion):
        # a GAN / VAE / flow: one network evaluation; a consistency model: one row per --nfe
        few = exp.method_name == "consistency"
        for nfe in (nfes if few else [1]):
            kw = {"steps": nfe} if few else {}
            draw = lambda p, key, n, i, kw=kw: method.sample(p, key, n, **kw)
            row = _eval_row(draw, params, num, batch, 0, extractor, None, real_feats)
            row.update(sampler=exp.method_name, nfe=nfe, steps=nfe, extractor=extractor.name,
                       grid="-", checkpoint_step=step)
            rows.append(row)
            print(json.dumps({k_: round(v, 4) if isinstance(v, float) else v
                              for k_, v in row.items()}))
        _write(rows, out, extractor, num, len(real_feats), step, None)
        return rows
    for s_name in samplers:
        for nfe in nfes:
            steps = steps_for_budget(s_name, nfe)
            for grid in grids if steps is not None else ():
                solver = s_name
                if grid == "learned":
                    try:
                        grid, solver = load_learned(workdir, s_name, steps,
                                                    exp.config["process"]["name"])
                    except FileNotFoundError:
                        print(f"note: no learned grid for {s_name} at NFE {nfe}; skipped")
                        continue
                fn = method.sample_fn(solver, steps, grid, guidance_scale=guidance if k else None)
                draw = _diffusion_draw(method, method.shape, fn, k)
                row = _eval_row(draw, params, num, batch, k, extractor, judge, real_feats)
                row.update(sampler=s_name, nfe=nfe, steps=steps, extractor=extractor.name,
                           grid="learned" if isinstance(grid, tuple) else grid,
                           checkpoint_step=step, **({"guidance": guidance} if k else {}))
                rows.append(row)
                print(json.dumps({k_: round(v, 4) if isinstance(v, float) else v
                                  for k_, v in row.items()}))
    _write(rows, out, extractor, num, len(real_feats), step, guidance if k else None)
    return rows


def _diffusion_draw(method, shape, fn, k):
    return lambda p, key, n, i: fn(p, method.process.prior_sample(key, (n,) + shape), key,
                                   {"y": (jnp.arange(n) + i) % k} if k else None)


def _eval_row(draw, params, num, batch, k, extractor, judge, real_feats) -> dict:
    """``draw(params, key, n, i)`` makes samples ``i .. i+n-1``."""
    t0 = time.perf_counter()
    images = sample_images(None, params, num, jax.random.key(0), min(batch, num), draw)
    secs = time.perf_counter() - t0
    feats, probs = extractor(images)
    kid_m, kid_s = M.kid(feats, real_feats, 20, min(1000, num))
    p, r = M.precision_recall(real_feats[:num], feats)
    row = {"num": num, "fd": M.fd_from_features(feats, real_feats), "kid": kid_m,
           "kid_std": kid_s, "precision": p, "recall": r,
           "class_score": M.inception_score(probs)[0], "seconds": secs}
    if k:
        pred = np.argmax(judge(images)[1], axis=1)
        row["agreement"] = float(np.mean(pred == np.arange(num) % k))
    return row


def _write(rows, out: Path, extractor, num, n_real, step, guidance) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(rows, indent=1))
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
    (out / "eval.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "fd_vs_nfe.png")


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
