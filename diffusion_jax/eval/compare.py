"""``compare``: trained workdirs of different families side by side, every number measured the
same way: parameters, training steps and wall time, FD / KID / precision / recall against the
test split with one feature extractor, class coverage under the project classifier, bits/dim
(diffusion: PF-ODE; flow: exact; VAE: ELBO and IWAE; GAN: none), and sampling images/s.

    python -m diffusion_jax compare --workdirs runs/fm,runs/gan,runs/vae,runs/flow \
        --classifier runs/classifier --num 2000

Writes ``compare.json``, ``compare.md`` and ``compare.png`` (a sample grid per family and the
metrics as bars) to ``--out``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot, no backend switch

from diffusion_jax.eval import metrics as M
from diffusion_jax.eval.bpd import workdir_bits_per_dim
from diffusion_jax.eval.features import classifier_extractor
from diffusion_jax.eval.sample_eval import reference_features, sample_images
from diffusion_jax.methods.base import SampleRequest
from diffusion_jax.utils.atomic import write_json, write_text
from diffusion_jax.utils.images import save_figure, to_uint8
from diffusion_jax.utils.memory import check_fits
from diffusion_jax.workdir import load, read_experiment

SPEED_BATCH = 256


def training_time(workdir) -> tuple[float, int]:
    """``(seconds, runs)``: the wall time the logged steps took, summed over resumed runs (each
    run's clock starts at zero)."""
    path = Path(workdir) / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    rows = [r for r in map(json.loads, filter(None, lines)) if "elapsed_s" in r]
    total, last, runs = 0.0, 0.0, 1 if rows else 0
    for r in rows:
        if r["elapsed_s"] < last:  # a new run started
            total, runs = total + last, runs + 1
        last = r["elapsed_s"]
    return total + last, runs


def sampling_speed(method, params, batch: int = SPEED_BATCH, repeats: int = 2) -> float:
    """Images per second of ``method.sample`` at ``batch``, compiled and warm (best of repeats)."""
    np.asarray(method.sample(params, jax.random.key(0), batch))  # compile
    best = float("inf")
    for i in range(repeats):
        t0 = time.perf_counter()
        np.asarray(method.sample(params, jax.random.key(i + 1), batch))
        best = min(best, time.perf_counter() - t0)
    return batch / best


def _bits(workdir, exp, num: int, out: Path) -> dict:
    if exp.method.likelihood is None:
        return {"bits_per_dim": None, "bound": f"none ({exp.method.no_likelihood})"}
    if num == 0:
        return {"bits_per_dim": None, "bound": "not measured (--bpd-num 0)"}
    res = workdir_bits_per_dim(str(workdir), num, min(num, 128), out=str(out))
    if len(res["bounds"]) == 1:  # one figure: say what it is rather than its key
        res["bound"] = res["meaning"]
    return res


def compare(workdirs, classifier: str, num: int = 2000, out: str | Path = "compare",
            bpd_num: int = 256, labels: list[str] | None = None) -> list[dict]:
    """Each workdir's row (sampled ``num`` times, bits/dim on ``bpd_num`` test images) into
    ``out``; every workdir is read and checked before any work, and ``out`` made only then."""
    out = Path(out)
    exps = [read_experiment(w) for w in workdirs]
    for w, e in zip(workdirs, exps):
        if not e.method.generates:
            raise ValueError(f"{w} holds a {e.method_name!r} run, which makes no samples")
    if len({e.data.shape for e in exps}) > 1:
        raise ValueError("the workdirs were trained on different image shapes: "
                         + ", ".join(f"{w} {e.data.shape}" for w, e in zip(workdirs, exps)))
    check_fits(num, exps[0].method.sample_shape, f"--num {num}", copies=2)
    extractor = classifier_extractor(classifier)
    out.mkdir(parents=True, exist_ok=True)
    real = reference_features(extractor, exps[0], out / "reference_features.npz")
    rows, grids = [], []
    for i, w in enumerate(workdirs):
        exp, params, step = load(w)
        label = labels[i] if labels else exp.method_name
        print(f"[{label}] {w}: sampling {num}", flush=True)
        t0 = time.perf_counter()
        images = sample_images(exp.method, params, num, jax.random.key(0), SPEED_BATCH)
        feats, probs = extractor(images)
        kid_m, _ = M.kid(feats, real, 20, min(1000, num))
        p, r = M.precision_recall(real[:num], feats)
        cov = M.class_coverage(probs)
        secs, runs = training_time(w)
        n_sample = sum(x.size for x in jax.tree_util.tree_leaves(params))
        row = {"family": label, "method": exp.method_name, "workdir": str(w),
               "parameters": int(n_sample), "train_steps": int(step),
               "train_minutes": secs / 60, "train_runs": runs,
               "fd": M.fd_from_features(feats, real), "kid": kid_m, "precision": p, "recall": r,
               "coverage": cov["coverage"], "class_entropy": cov["entropy"],
               "max_class_fraction": cov["max_fraction"], "class_histogram": cov["histogram"],
               "nfe_per_sample": exp.method.nfe(SampleRequest()),
               "images_per_s": sampling_speed(exp.method, params), "num": num}
        if bpd_num:
            print(f"[{label}] bits/dim on {bpd_num} test images", flush=True)
        bits = _bits(w, exp, bpd_num, out / f"likelihood_{i}_{exp.method_name}.json")
        row.update(bits_per_dim=bits.get("bits_per_dim"), bpd_kind=bits.get("bound", ""),
                   has_likelihood=exp.method.likelihood is not None,
                   bpd_bounds={k: v["bits_per_dim"] for k, v in bits.get("bounds", {}).items()},
                   seconds=time.perf_counter() - t0)
        rows.append(row)
        grids.append((label, images[:64]))
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()
                          if k != "class_histogram"}), flush=True)
    write_json(out / "compare.json", {"extractor": extractor.name, "num": num,
                                      "num_real": len(real), "bpd_num": bpd_num, "rows": rows})
    write_text(out / "compare.md", _markdown(rows, extractor.name, num, len(real), bpd_num))
    _figure(rows, grids, out / "compare.png")
    return rows


def _markdown(rows, extractor: str, num: int, n_real: int, bpd_num: int) -> str:
    def bpd(r):
        if r["bits_per_dim"] is None:
            return "not measured" if r["has_likelihood"] else "no likelihood"
        if r["bpd_bounds"] and len(r["bpd_bounds"]) > 1:
            return " / ".join(f"{v:.3f} ({k})" for k, v in r["bpd_bounds"].items())
        return f"{r['bits_per_dim']:.3f} ({r['bpd_kind']})"

    head = ("| family | parameters | train steps | train min | FD | KID | precision | recall | "
            "coverage | class entropy | bits/dim | NFE | img/s (batch 256) |")
    lines = [f"Features: {extractor}; {num} samples per model vs the {n_real}-image test split; "
             f"bits/dim on {bpd_num} test images; coverage = fraction of classes holding >= 5% "
             "of the samples (entropy of a balanced histogram: ln 10 = 2.303).\n", head,
             "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['parameters'] / 1e6:.2f}M | {r['train_steps']} | "
            f"{r['train_minutes']:.1f} | {r['fd']:.2f} | {r['kid']:.4f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['coverage']:.1f} | {r['class_entropy']:.3f} | {bpd(r)} | "
            f"{r['nfe_per_sample']} | {r['images_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def _figure(rows, grids, path: Path) -> None:

    n = len(rows)
    fig = Figure(figsize=(3.2 * max(n, 4), 7.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    for i, (label, imgs) in enumerate(grids):
        ax = top.add_subplot(1, n, i + 1)
        k = int(np.sqrt(len(imgs)))
        g = to_uint8(imgs[: k * k])
        h, w, c = g.shape[1:]
        tile = g.reshape(k, k, h, w, c).transpose(0, 2, 1, 3, 4).reshape(k * h, k * w, c)
        ax.imshow(tile.squeeze(-1) if c == 1 else tile, cmap="gray" if c == 1 else None)
        ax.set_title(label)
        ax.axis("off")
    metrics = [("fd", "FD (lower is better)"), ("recall", "recall"), ("coverage", "class coverage"),
               ("bits_per_dim", "bits/dim"), ("images_per_s", "sampling img/s (log)")]
    names = [r["family"] for r in rows]
    for j, (key, title) in enumerate(metrics):
        ax = bottom.add_subplot(1, len(metrics), j + 1)
        vals = [r[key] if r[key] is not None else 0.0 for r in rows]
        ax.bar(names, vals, color=[f"C{i}" for i in range(n)])
        for x, r in enumerate(rows):
            if r[key] is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom")
        if key == "images_per_s":
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    save_figure(fig, path, dpi=90)
