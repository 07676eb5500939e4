"""``likelihood``: bits/dim of a trained workdir on the test split; mean and standard error.
What the number is comes from the method (``likelihood`` and ``bits_per_dim``): diffusion the
probability-flow ODE with uniform dequantisation and Hutchinson's trace estimator; flow exact
(dequantised); VAE the ELBO and the importance-weighted bound; autoregressive exact. A method
with ``likelihood = None`` (a GAN) says why it has none.

    python -m diffusion_jax likelihood --workdir runs/fm --num 512
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from diffusion_jax.data import get_source
from diffusion_jax.utils.atomic import json_text, write_json
from diffusion_jax.workdir import load, read_experiment

FAMILIES_WITH_ONE = ("diffusion (PF-ODE), flow (exact), vae (ELBO and IWAE bounds), "
                     "autoregressive (exact)")
MEANING = {"exact": "exact (dequantised data)", "iwae": "upper bound (IWAE)",
           "elbo": "upper bound (ELBO)", "pf_ode": "PF-ODE (dequantised, Hutchinson)",
           "discrete": "exact (discrete 8-bit data)"}


def workdir_bits_per_dim(workdir: str, num: int = 512, batch: int = 128, trace: str = "rademacher",
                         rtol: float = 1e-4, atol: float = 1e-4, seed: int = 0,
                         out: str | None = None, images: str | None = None) -> dict:
    """The method's bits/dim on the first ``num`` test images, ``batch`` at a time (one key per
    batch: ``fold_in(key(seed), i)``); the tightest of its figures is the headline. ``images``:
    a dataset name whose test split replaces the experiment's (a pretrained folder has none)."""
    exp = read_experiment(workdir)
    method = exp.method
    if method.likelihood is None:
        raise ValueError(f"{workdir}: {method.no_likelihood}; the families with one: "
                         f"{FAMILIES_WITH_ONE}")
    given = {"trace": trace, "rtol": rtol, "atol": atol}
    options = {k: v for k, v in given.items() if k in method.likelihood_options}
    dataset = images or exp.data.dataset
    if not dataset:
        raise ValueError(f"{workdir} is a pretrained model with no test split: pass --images "
                         "DATASET (e.g. npz:test.npz with uint8 images, or tfds:cifar10)")
    test, num = _test_images(dataset, exp, num)
    exp, params, step = load(workdir)
    parts, stats, t0 = {}, {}, time.perf_counter()
    for i in tqdm(range(0, num, batch), desc="bits/dim", dynamic_ncols=True):
        idx = range(i, min(i + batch, num))
        y = np.stack([test[j]["image"] for j in idx]).astype(np.float32) / 127.5 - 1.0
        y = y[..., None] if y.ndim == 3 else y
        got = method.bits_per_dim(params, jnp.asarray(y),
                                  jax.random.fold_in(jax.random.key(seed), i), **options)
        for k, v in got.items():
            v = np.asarray(v)
            if v.ndim == 0:  # a per-batch figure of the computation (the ODE's NFE)
                stats.setdefault(f"{k}_per_batch", []).append(v.item())
                continue
            if not np.all(np.isfinite(v)):
                raise FloatingPointError(f"{k} bits/dim of test images {i}..{idx[-1]} is NaN/inf "
                                         f"(checkpoint step {step} of {workdir}): the model "
                                         "diverged")
            parts.setdefault(k, []).append(v)
    bounds = {k: _mean_se(np.concatenate(v)) for k, v in parts.items()}
    best = min(bounds, key=lambda k: bounds[k]["bits_per_dim"])
    res = {**bounds[best], "bound": best, "meaning": MEANING.get(best, best), "bounds": bounds,
           "num": num, "method": exp.method_name, "checkpoint_step": step, **options, **stats,
           "seconds": time.perf_counter() - t0}
    return _write(res, workdir, out)


def _mean_se(b: np.ndarray) -> dict:
    return {"bits_per_dim": float(b.mean()),
            "standard_error": float(b.std(ddof=1) / math.sqrt(len(b))) if len(b) > 1 else 0.0}


def _test_images(dataset: str, exp, num: int):
    test = get_source(dataset, "test", exp.data.data_dir or None)
    if test[0]["image"].dtype != np.uint8:
        raise ValueError("bits/dim needs 8-bit image data; this dataset is continuous")
    shape = np.asarray(test[0]["image"]).shape
    if int(np.prod(shape)) != int(np.prod(exp.method.sample_shape)):
        raise ValueError(f"{dataset} holds {shape} images; the model makes "
                         f"{tuple(exp.method.sample_shape)}")
    return test, min(num, len(test))


def _write(res: dict, workdir, out) -> dict:
    path = Path(out or Path(workdir) / "eval" / "likelihood.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, res)
    print(json_text(res, indent=None))
    return res
