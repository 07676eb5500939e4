import numpy as np
import pytest

from diffusion_jax import eval as ev


def test_fd_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(2000, 16))
    assert abs(ev.fd_from_features(f, f)) < 1e-8


def test_fd_matches_closed_form_for_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 8))
    s1 = a @ a.T + np.eye(8)
    s2 = np.diag(np.linspace(0.5, 2, 8))
    mu1, mu2 = np.zeros(8), np.full(8, 0.5)
    # closed form: for commuting / diagonal s2, tr((s1 s2)^{1/2}) = sum sqrt(eig(s2^1/2 s1 s2^1/2))
    r2 = np.diag(np.sqrt(np.diag(s2)))
    tr = np.sum(np.sqrt(np.linalg.eigvalsh(r2 @ s1 @ r2)))
    want = 8 * 0.25 + np.trace(s1) + np.trace(s2) - 2 * tr
    assert np.isclose(ev.frechet_distance(mu1, s1, mu2, s2), want, rtol=1e-10)
    iso = ev.frechet_distance(np.zeros(3), np.eye(3), np.ones(3), 4 * np.eye(3))
    assert np.isclose(iso, 3 + 3 * (1 - 2) ** 2)  # |d|^2 + sum (sqrt(1) - sqrt(4))^2


def test_kid_is_unbiased_on_equal_distributions():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3000, 8)), rng.normal(size=(3000, 8))
    mean, std = ev.kid(a, b, num_subsets=50, subset_size=500)
    assert abs(mean) < 3 * std / np.sqrt(50) + 1e-4
    far, _ = ev.kid(a, b + 1.0, num_subsets=10, subset_size=500)
    assert far > 20 * std


def test_precision_recall():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(500, 4))
    assert ev.precision_recall(a, a) == (1.0, 1.0)
    p, r = ev.precision_recall(a, a + 10.0)
    assert p == 0.0 and r == 0.0


def test_inception_score_bounds():
    k = 10
    assert np.isclose(ev.inception_score(np.eye(k)[np.arange(1000) % k])[0], k, rtol=1e-6)
    assert np.isclose(ev.inception_score(np.full((1000, k), 1 / k))[0], 1.0)


def test_bad_input(tmp_path):
    with pytest.warns(UserWarning, match="covariance is singular"):
        ev.feature_stats(np.ones((5, 10)))
    with pytest.raises(ValueError, match="expected \\[-1, 1\\]"):
        ev.check_image_range(np.full((2, 4), 200.0))
    f = np.random.default_rng(0).normal(size=(50, 3))
    ev.save_stats(tmp_path / "s.npz", f, "classifier")
    mu, s, name = ev.load_stats(tmp_path / "s.npz")
    assert name == "classifier" and mu.shape == (3,)
