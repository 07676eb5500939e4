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
from diffusion_jax.experiment import data_shape
from diffusion_jax.generate import load_workdir, make_sample_fn
from diffusion_jax.train.classifier import image_batches, load_classifier


def evaluate(workdir: str, classifier_dir: str, samplers, nfes, num: int, batch: int = 500,
             out: str | None = None) -> list[dict]:
    config, model, process, par, state, step = load_workdir(workdir)
    clf, cparams = load_classifier(classifier_dir)
    extractor = f"CNN classifier of {classifier_dir} (penultimate layer, {clf.feature_dim}-d)"
    batch = min(batch, num)
    feat_fn = jax.jit(lambda x: clf.apply({"params": cparams}, x, jnp.zeros(x.shape[:1]),
                                          return_features=True))
    test = get_source(config.data.dataset, "test", config.data.data_dir or None)
    real = [feat_fn(x) for x, _ in image_batches(test, 1000)]
    real_feats = np.concatenate([np.asarray(f[1]) for f in real])
    shape = data_shape(config)
    rows = []
    for s_name in samplers:
        for nfe in nfes:
            steps = steps_for_budget(s_name, nfe)
            if steps is None:
                continue
            fn = make_sample_fn(model, process, par, s_name, steps, config.sample.grid)
            t0 = time.perf_counter()
            feats, probs = [], []
            for i in range(0, num, batch):
                k = jax.random.fold_in(jax.random.key(0), i)
                x = fn(state.ema_params, process.prior_sample(k, (batch,) + shape), k)
                logits, f = feat_fn(jnp.clip(x, -1, 1))
                feats.append(np.asarray(f))
                probs.append(np.asarray(jax.nn.softmax(logits)))
            secs = time.perf_counter() - t0
            feats, probs = np.concatenate(feats)[:num], np.concatenate(probs)[:num]
            kid_m, kid_s = M.kid(feats, real_feats, 20, min(1000, num))
            p, r = M.precision_recall(real_feats[:num], feats)
            row = {"sampler": s_name, "nfe": nfe, "steps": steps, "num": num,
                   "fd": M.fd_from_features(feats, real_feats), "kid": kid_m, "kid_std": kid_s,
                   "precision": p, "recall": r, "class_score": M.inception_score(probs)[0],
                   "seconds": secs, "extractor": extractor, "checkpoint_step": step}
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    out = Path(out or Path(workdir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(rows, indent=1))
    lines = [f"FD/KID with the {extractor}, {num} samples vs the {len(real_feats)}-image test split; "
             f"checkpoint step {step}\n", "| sampler | NFE | FD | KID | precision | recall | s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['nfe']} | {r['fd']:.3f} | {r['kid']:.4f} | {r['precision']:.3f} "
              f"| {r['recall']:.3f} | {r['seconds']:.1f} |" for r in rows]
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
