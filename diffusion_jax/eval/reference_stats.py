"""FID reference statistics as the published tables compute them: an ``.npz`` with ``mu`` [D]
and ``sigma`` [D, D], the format EDM's ``fid.py ref``, pytorch-fid and clean-fid write.

    mu, sigma = reference_stats("fashion_mnist", classifier="runs/classifier", out="fm.npz")
    stats = read_stats("cifar10-32x32.npz")     # -> Stats(mu, sigma, sha256, path)

Statistics carry no record of their extractor in those formats, so every report names the file
and its SHA-256, and a dimension that differs from the extractor's is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from diffusion_jax.data import get_source
from diffusion_jax.data.pipeline import image_batches
from diffusion_jax.eval.features import Extractor, make_extractor
from diffusion_jax.utils.atomic import atomic_path
from diffusion_jax.utils.images import load_images


class Stats(NamedTuple):
    mu: np.ndarray
    sigma: np.ndarray
    sha256: str
    path: str


class RunningStats:
    """Mean and covariance of features fed in chunks (float64 sums: nothing else is kept)."""

    def __init__(self):
        self.n, self.s, self.ss = 0, None, None

    def add(self, feats: np.ndarray) -> None:
        f = np.asarray(feats, np.float64)
        if self.s is None:
            self.s, self.ss = np.zeros(f.shape[1]), np.zeros((f.shape[1], f.shape[1]))
        self.n += len(f)
        self.s += f.sum(0)
        self.ss += f.T @ f

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"statistics need at least 2 images, got {self.n}")
        mu = self.s / self.n
        return mu, (self.ss - self.n * np.outer(mu, mu)) / (self.n - 1)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_stats(path) -> Stats:
    """An ``.npz`` with ``mu`` and ``sigma`` (read without pickle), checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--ref-stats {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "mu" not in f or "sigma" not in f:
                raise ValueError(f"{path} has {', '.join(f.files) or 'no arrays'}; reference "
                                 "statistics need 'mu' and 'sigma' (EDM fid.py ref, pytorch-fid "
                                 "and clean-fid write them)")
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} is not an .npz of arrays ({e})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not (
            np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} must be [D] and [D, D] "
                         "and finite")
    return Stats(mu, sigma, sha256(path), str(path))


def _image_chunks(images, channels: int | None, batch: int = 500):
    """Batches in [-1, 1] from an array, an image file (.npy/.npz/.png), a folder of PNGs, or a
    dataset name (its test split)."""
    if isinstance(images, np.ndarray):
        for i in range(0, len(images), batch):
            yield images[i: i + batch]
        return
    p = Path(images)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise ValueError(f"{p} holds no .png/.jpg images")
        for i in range(0, len(files), batch):
            yield np.concatenate([load_images(q, channels or 3) for q in files[i: i + batch]])
    elif p.is_file():
        yield from _image_chunks(load_images(p, channels or 3), channels, batch)
    else:
        for x, _ in image_batches(get_source(str(images), "test"), batch):
            yield x


def reference_stats(images, extractor: Extractor | None = None, classifier: str | None = None,
                    inception: str | None = None, out=None, channels: int | None = None):
    """``(mu, sigma, n)`` of the extractor's features over ``images`` (an array in [-1, 1], an
    image file, a folder of PNGs or a dataset name such as ``fashion_mnist``: its test split);
    with ``out``, written as ``.npz`` (``mu``, ``sigma``, ``num``) whole or not at all."""
    extractor = extractor or make_extractor(classifier, inception)
    acc = RunningStats()
    for x in _image_chunks(images, channels):
        if acc.n == 0:
            extractor.check(x.shape[1:])
        acc.add(extractor(x)[0])
    mu, sigma = acc.result()
    if out is not None:
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma, num=np.array(acc.n), extractor=np.array(extractor.name))
    return mu, sigma, acc.n
