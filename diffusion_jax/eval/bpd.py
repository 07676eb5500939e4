"""``likelihood``: bits/dim of a trained workdir on the test split; mean and standard error.
Diffusion: the probability-flow ODE with uniform dequantisation and Hutchinson's trace
estimator; flow: exact (dequantised); VAE: the ELBO and the importance-weighted bound. A GAN
has none.

    python -m diffusion_jax likelihood --workdir runs/fm --num 512
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from diffusion_jax.data import get_source
from diffusion_jax.methods.diffusion import Diffusion
from diffusion_jax.workdir import load, read_experiment
from diffusion_jax.likelihood import bits_per_dim, dequantize, log_likelihood


def workdir_bits_per_dim(workdir: str, num: int = 512, batch: int = 128, trace: str = "rademacher",
                         rtol: float = 1e-4, atol: float = 1e-4, seed: int = 0,
                         out: str | None = None) -> dict:
    exp = read_experiment(workdir)
    method = exp.method
    if hasattr(method, "bits_per_dim"):
        return _family_bits_per_dim(workdir, num, batch, seed, out)
    if not isinstance(method, Diffusion):
        what = "a GAN has no likelihood" if exp.method_name == "gan" else \
            f"a {exp.method_name!r} run has no likelihood"
        raise ValueError(f"{workdir}: {what}; the families with one: diffusion (PF-ODE), flow "
                         "(exact), vae (ELBO and IWAE bounds)")
    if getattr(method, "pixel_shape", None):
        raise ValueError(f"{workdir} is a latent diffusion model: the PF-ODE gives the density "
                         "of latents, not of pixels, so it has no bits/dim of the images")
    exp, params, step = load(workdir)
    cc, process = method.conditioning, method.process
    if cc.low_res_size or cc.context_dim:
        raise ValueError("likelihood is for unconditional or class-conditional models (this one "
                         "needs a low-res image or a context per example)")
    test, num = _test_images(exp, num)

    @jax.jit
    def logp(params, y, key):
        k_deq, k_tr = jax.random.split(key)
        x = dequantize(k_deq, y)
        # A class-conditional model's null label: the unconditional likelihood.
        denoise = method.denoiser(params)
        return log_likelihood(denoise, process, x, key=k_tr, trace=trace, rtol=rtol, atol=atol)

    dim = None
    bpds, nfes, t0 = [], [], time.perf_counter()
    for i in tqdm(range(0, num, batch), desc="bits/dim", dynamic_ncols=True):
        idx = range(i, min(i + batch, num))
        y = np.stack([test[j]["image"] for j in idx]).astype(np.int32)
        y = y[..., None] if y.ndim == 3 else y
        dim = math.prod(y.shape[1:])
        lp, stats = logp(params, jnp.asarray(y), jax.random.fold_in(jax.random.key(seed), i))
        bpds.append(np.asarray(bits_per_dim(lp, dim)))
        if not np.all(np.isfinite(bpds[-1])):
            raise FloatingPointError(f"bits/dim of test images {i}..{idx[-1]} is NaN/inf "
                                     f"(checkpoint step {step} of {workdir}): the model diverged")
        nfes.append(int(stats["nfe"]))
    b = np.concatenate(bpds)
    res = {**_mean_se(b), "num": int(len(b)), "trace": trace, "rtol": rtol, "atol": atol,
           "dequantization": "uniform", "checkpoint_step": step, "nfe_per_batch": nfes,
           "seconds": time.perf_counter() - t0}
    return _write(res, workdir, out)


def _mean_se(b: np.ndarray) -> dict:
    return {"bits_per_dim": float(b.mean()),
            "standard_error": float(b.std(ddof=1) / math.sqrt(len(b))) if len(b) > 1 else 0.0}


def _test_images(exp, num: int):
    test = get_source(exp.data.dataset, "test", exp.data.data_dir or None)
    if test[0]["image"].dtype != np.uint8:
        raise ValueError("bits/dim needs 8-bit image data; this dataset is continuous")
    return test, min(num, len(test))


def _family_bits_per_dim(workdir, num: int, batch: int, seed: int, out) -> dict:
    """A flow's exact bits/dim or a VAE's bounds (the method's ``bits_per_dim``)."""
    exp, params, step = load(workdir)
    test, num = _test_images(exp, num)
    parts, t0 = {}, time.perf_counter()
    for i in tqdm(range(0, num, batch), desc="bits/dim", dynamic_ncols=True):
        idx = range(i, min(i + batch, num))
        y = np.stack([test[j]["image"] for j in idx]).astype(np.float32) / 127.5 - 1.0
        y = y[..., None] if y.ndim == 3 else y
        got = exp.method.bits_per_dim(params, jnp.asarray(y),
                                      jax.random.fold_in(jax.random.key(seed), i))
        for k, v in got.items():
            v = np.asarray(v)
            if not np.all(np.isfinite(v)):
                raise FloatingPointError(f"{k} bits/dim of test images {i}..{idx[-1]} is NaN/inf "
                                         f"(checkpoint step {step} of {workdir})")
            parts.setdefault(k, []).append(v)
    bounds = {k: _mean_se(np.concatenate(v)) for k, v in parts.items()}
    best = min(bounds, key=lambda k: bounds[k]["bits_per_dim"])
    kind = {"exact": "exact (dequantised data)", "iwae": "upper bound (IWAE)"}
    res = {**bounds[best], "bound": best, "meaning": kind.get(best, best), "bounds": bounds,
           "num": num, "method": exp.method_name, "checkpoint_step": step,
           "seconds": time.perf_counter() - t0}
    return _write(res, workdir, out)


def _write(res: dict, workdir, out) -> dict:
    path = Path(out or Path(workdir) / "eval" / "likelihood.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    return res
