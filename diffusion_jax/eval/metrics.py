"""Sample-quality metrics over feature vectors ``[N, D]`` (any extractor; say which in reports).

* ``frechet_distance``: ``|mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})`` (Heusel et al. 2017) in
  float64 on the host; the trace of the square root comes from the eigenvalues of
  ``S1^{1/2} S2 S1^{1/2}`` (symmetric PSD), which is stable where ``scipy.linalg.sqrtm`` of the
  non-symmetric product is not;
* ``kid``: unbiased MMD^2 with the cubic polynomial kernel over random subsets (Binkowski et al.
  2018): mean and std over subsets;
* ``precision_recall``: k-NN manifold estimates (Kynkaanniemi et al. 2019);
* ``inception_score``: ``exp E_x KL(p(y|x) || p(y))`` from class probabilities.

Reference statistics are cached as ``.npz`` (``allow_pickle=False``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(feats, np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {f.shape}")
    if f.shape[0] <= f.shape[1]:
        warnings.warn(f"{f.shape[0]} samples for {f.shape[1]}-dimensional features: the covariance "
                      "is singular; use more samples than feature dimensions for a meaningful FD")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, s1, mu2, s2) -> float:
    r1 = _psd_sqrt(np.asarray(s1, np.float64))
    m = r1 @ np.asarray(s2, np.float64) @ r1
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)))
    d = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def fd_from_features(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def kid(a: np.ndarray, b: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
        vals.append(off(kxx) + off(kyy) - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


def _radii(f: np.ndarray, k: int) -> np.ndarray:
    d = _sqdist(f, f)
    return np.sqrt(np.sort(d, axis=1)[:, k])  # k-th neighbour (index 0 is the point itself)


def _sqdist(a, b):
    return np.maximum((a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T, 0)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    r_real, r_fake = _radii(real, k), _radii(fake, k)
    d = np.sqrt(_sqdist(fake, real))  # [fake, real]
    precision = np.mean(np.any(d <= r_real[None], axis=1))
    recall = np.mean(np.any(d.T <= r_fake[None], axis=1))
    return float(precision), float(recall)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    p = np.asarray(probs, np.float64)
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        kl = np.sum(part * (np.log(part + 1e-12) - np.log(py + 1e-12)), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


COLLAPSE_FRACTION = 0.9  # one class holding more than this share of the samples: collapsed


def class_coverage(probs: np.ndarray, threshold: float = 0.05) -> dict:
    """The class histogram of samples under a classifier (its argmax) and what it says about mode
    coverage: ``coverage`` (the fraction of classes holding at least ``threshold`` of the samples),
    ``entropy`` (of the histogram, in nats; ``log K`` when balanced), ``max_fraction`` and
    ``top_class``; ``collapsed`` when one class holds more than ``COLLAPSE_FRACTION``."""
    k = probs.shape[1]
    hist = np.bincount(np.argmax(probs, axis=1), minlength=k) / len(probs)
    nz = hist[hist > 0]
    return {"coverage": float(np.mean(hist >= threshold)), "entropy": float(-np.sum(nz * np.log(nz))),
            "max_fraction": float(hist.max()), "top_class": int(hist.argmax()),
            "collapsed": bool(hist.max() > COLLAPSE_FRACTION), "histogram": hist.tolist()}


def save_stats(path: str | Path, feats: np.ndarray, extractor: str) -> None:
    mu, sigma = feature_stats(feats)
    np.savez(path, mu=mu, sigma=sigma, n=len(feats), extractor=np.array(extractor))


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray, str]:
    with np.load(path, allow_pickle=False) as f:
        return f["mu"], f["sigma"], str(f["extractor"])


def check_image_range(images: np.ndarray) -> None:
    """Metrics take images in [-1, 1]; catch [0, 255] inputs before they give nonsense."""
    lo, hi = float(np.min(images)), float(np.max(images))
    if hi > 1.5 or lo < -1.5:
        raise ValueError(f"images range over [{lo:.3g}, {hi:.3g}], expected [-1, 1]: for uint8 "
                         "images use x / 127.5 - 1")
