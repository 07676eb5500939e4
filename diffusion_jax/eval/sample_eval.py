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

from diffusion_jax.bench.samplers import steps_for_budget
from diffusion_jax.data import get_source
from diffusion_jax.eval import metrics as M
from diffusion_jax.eval.features import Extractor, classifier_extractor, make_extractor
from diffusion_jax.experiment import conditioning, data_shape
from diffusion_jax.generate import load_workdir, make_sample_fn
from diffusion_jax.train.classifier import image_batches


def reference_features(extractor: Extractor, config, cache: Path | None = None) -> np.ndarray:
    """The test split's features (cached as ``.npz`` next to the results, no pickle)."""
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as f:
            if str(f["extractor"]) == extractor.name:
                return f["features"]
    test = get_source(config.data.dataset, "test", config.data.data_dir or None)
    feats = np.concatenate([extractor(x)[0] for x, _ in image_batches(test, 1000)])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, features=feats, extractor=np.array(extractor.name))
    return feats


def sample_fd(config, model, process, par, params, extractor: Extractor, real_feats: np.ndarray,
              num: int, key, batch: int = 250) -> float:
    """FD of ``num`` samples (the experiment's own sampler; class-balanced labels at
    ``sample.guidance`` for class-conditional models) against ``real_feats``: the training-time
    FID of ``train.fid_every``."""
    cc, sc, shape = conditioning(config), config.sample, data_shape(config)
    guide = sc.get("guidance", None) if cc.num_classes else None
    fn = make_sample_fn(model, process, par, sc.sampler, sc.num_steps, sc.grid, guidance_scale=guide)
    images = []
    for i in range(0, num, batch):
        k = jax.random.fold_in(key, i)
        n = min(batch, num - i)
        cond = {"y": jnp.arange(i, i + n) % cc.num_classes} if cc.num_classes else None
        images.append(np.asarray(jnp.clip(fn(params, process.prior_sample(k, (n,) + shape), k,
                                             cond), -1, 1)))
    return M.fd_from_features(extractor(np.concatenate(images))[0], real_feats)


def evaluate(workdir: str, classifier_dir: str | None, samplers, nfes, num: int, batch: int = 500,
             out: str | None = None, inception: str | None = None,
             guidance: float | None = None) -> list[dict]:
    """Samplers x NFE -> FD, KID, precision/recall, class score (and, for class-conditional
    models, the fraction of samples the classifier assigns to the requested class)."""
    config, model, process, par, state, step = load_workdir(workdir)
    extractor = make_extractor(classifier_dir, inception)
    judge = classifier_extractor(classifier_dir) if classifier_dir else None
    cc = conditioning(config)
    if cc.num_classes and judge is None:
        raise SystemExit("a class-conditional model is judged by a classifier: pass --classifier")
    out = Path(out or Path(workdir) / "eval")
    batch = min(batch, num)
    real_feats = reference_features(extractor, config, out / "reference_features.npz")
    shape = data_shape(config)
    rows = []
    for s_name in samplers:
        for nfe in nfes:
            steps = steps_for_budget(s_name, nfe)
            if steps is None:
                continue
            fn = make_sample_fn(model, process, par, s_name, steps, config.sample.grid,
                                guidance_scale=guidance if cc.num_classes else None)
            t0 = time.perf_counter()
            images, labels = [], []
            for i in range(0, num, batch):
                k = jax.random.fold_in(jax.random.key(0), i)
                cond = None
                if cc.num_classes:
                    y = jnp.arange(i, i + batch) % cc.num_classes
                    cond = {"y": y}
                    labels.append(np.asarray(y))
                x = fn(state.ema_params, process.prior_sample(k, (batch,) + shape), k, cond)
                images.append(np.asarray(jnp.clip(x, -1, 1)))
            images = np.concatenate(images)[:num]
            secs = time.perf_counter() - t0
            feats, probs = extractor(images)
            kid_m, kid_s = M.kid(feats, real_feats, 20, min(1000, num))
            p, r = M.precision_recall(real_feats[:num], feats)
            row = {"sampler": s_name, "nfe": nfe, "steps": steps, "num": num,
                   "fd": M.fd_from_features(feats, real_feats), "kid": kid_m, "kid_std": kid_s,
                   "precision": p, "recall": r, "class_score": M.inception_score(probs)[0],
                   "seconds": secs, "extractor": extractor.name, "checkpoint_step": step}
            if cc.num_classes:
                pred = np.argmax(judge(images)[1], axis=1)
                row["agreement"] = float(np.mean(pred == np.concatenate(labels)[:num]))
                row["guidance"] = guidance
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(rows, indent=1))
    agree = bool(cc.num_classes)
    lines = [f"FD/KID with the {extractor.name}, {num} samples vs the {len(real_feats)}-image "
             f"test split; checkpoint step {step}"
             + (f"; guidance {guidance}" if agree else "") + "\n",
             "| sampler | NFE | FD | KID | precision | recall |" + (" class agreement |" if agree else "")
             + " s |", "|---|---|---|---|---|---|---|" + ("---|" if agree else "")]
    lines += [f"| {r['sampler']} | {r['nfe']} | {r['fd']:.3f} | {r['kid']:.4f} | {r['precision']:.3f} "
              f"| {r['recall']:.3f} |" + (f" {r['agreement']:.3f} |" if agree else "")
              + f" {r['seconds']:.1f} |" for r in rows]
    (out / "eval.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "fd_vs_nfe.png")
    return rows


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for s in dict.fromkeys(r["sampler"] for r in rows):
        pts = [(r["nfe"], r["fd"]) for r in rows if r["sampler"] == s]
        ax.plot(*zip(*pts), marker="o", label=s)
    ax.set_xscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("FD (classifier features)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
