"""FID reference statistics (the mu/sigma .npz of EDM's fid.py, pytorch-fid, clean-fid) and
evaluation against them with the samples streamed through the extractor."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.eval import metrics as M
from diffusion_jax.eval.features import Extractor
from diffusion_jax.eval.reference_stats import RunningStats, read_stats, reference_stats, sha256


def pooled_extractor():
    """A fixed feature map (4x4 average pooling, flattened) standing in for a network."""
    fn = jax.jit(lambda x: (jax.image.resize(x, (x.shape[0], 2, 2, x.shape[-1]), "linear")
                            .reshape(x.shape[0], -1), jnp.ones((x.shape[0], 3)) / 3))
    return Extractor("pooled", fn, batch=7)


def test_running_stats_equal_numpy_in_any_chunking():
    f = np.random.default_rng(0).normal(size=(103, 5))
    acc = RunningStats()
    for i in range(0, 103, 10):
        acc.add(f[i: i + 10])
    mu, sigma = acc.result()
    np.testing.assert_allclose(mu, f.mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), atol=1e-12)


def test_reference_stats_write_the_published_format(tmp_path):
    images = np.random.default_rng(1).uniform(-1, 1, (40, 8, 8, 1)).astype(np.float32)
    ext = pooled_extractor()
    mu, sigma, n = reference_stats(images, ext, out=tmp_path / "ref.npz")
    feats = ext(images)[0]
    assert n == 40
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False), atol=1e-6)
    stats = read_stats(tmp_path / "ref.npz")
    assert stats.sha256 == sha256(tmp_path / "ref.npz") and len(stats.sha256) == 64
    # FID of the same set against its own statistics is 0; of another set, the FD of features
    other = np.random.default_rng(2).uniform(-1, 0.5, (40, 8, 8, 1)).astype(np.float32)
    f2 = ext(other)[0]
    fid = M.frechet_distance(*M.feature_stats(f2), stats.mu, stats.sigma)
    assert fid == pytest.approx(M.fd_from_features(f2, feats), rel=1e-6) and fid > 0.1


def test_bad_reference_statistics_are_named(tmp_path):
    np.savez(tmp_path / "a.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="a.npz has mean; reference statistics need 'mu' and 'sigma'"):
        read_stats(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", mu=np.zeros(3), sigma=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"mu \(3,\) and sigma \(2, 2\)"):
        read_stats(tmp_path / "b.npz")
    with pytest.raises(FileNotFoundError, match="c.npz does not exist"):
        read_stats(tmp_path / "c.npz")
