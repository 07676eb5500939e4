"""Guidance, inpainting and SDEdit against the exact Gaussian-mixture posteriors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax import guidance
from diffusion_jax.gmm import labelled_denoiser


@pytest.fixture(scope="module")
def setup():
    means = np.array([[-2.0, -2.0], [2.0, -2.0], [0.0, 2.5]])
    var = np.full((3, 2), 0.3**2)
    g = dj.gmm.GaussianMixture(means, var, np.array([0.6, 0.3, 0.1]))
    return g, dj.processes.VP.linear()


def test_cfg_scale_one_is_conditional_and_zero_unconditional(setup):
    g, proc = setup
    den = labelled_denoiser(g, proc)
    x = jax.random.normal(jax.random.key(0), (16, 2))
    y = jnp.arange(16) % 3
    for t in (0.1, 0.5, 0.9):
        cond = den(x, t, y)
        unc = g.denoiser(proc)(x, t)
        np.testing.assert_allclose(guidance.classifier_free_guidance(den, y, 3, 1.0)(x, t), cond, atol=1e-5)
        np.testing.assert_allclose(guidance.classifier_free_guidance(den, y, 3, 0.0)(x, t), unc, atol=1e-5)


def test_classifier_guidance_w1_is_the_exact_conditional_denoiser(setup):
    g, proc = setup
    y = jnp.arange(16) % 3
    log_prob = lambda x, t: g.class_log_posterior(proc, x, t)
    guided = guidance.classifier_guidance(g.denoiser(proc), log_prob, y, 1.0, proc)
    x = 2 * jax.random.normal(jax.random.key(1), (16, 2))
    for t in (0.05, 0.3, 0.8):
        np.testing.assert_allclose(guided(x, t), labelled_denoiser(g, proc)(x, t, y), rtol=1e-3,
                                   atol=1e-4)


@pytest.mark.parametrize("kind", ["cfg", "classifier"])
def test_guided_samples_have_the_requested_class(setup, kind):
    g, proc = setup
    n = 3000
    y = jnp.full((n,), 2)  # the rarest class (weight 0.1)
    if kind == "cfg":
        den = guidance.classifier_free_guidance(labelled_denoiser(g, proc), y, 3, 1.0)
    else:
        den = guidance.classifier_guidance(g.denoiser(proc), lambda x, t: g.class_log_posterior(proc, x, t),
                                           y, 1.0, proc)
    x = dj.sample(den, proc, proc.prior_sample(jax.random.key(0), (n, 2)), sampler="ddpm",
                  num_steps=100, key=jax.random.key(1))
    lab = np.argmin(((np.asarray(x)[:, None] - g.means[None]) ** 2).sum(-1), axis=1)
    assert np.mean(lab == 2) > 0.99
    np.testing.assert_allclose(np.asarray(x)[lab == 2].mean(0), g.means[2], atol=0.03)
    np.testing.assert_allclose(np.asarray(x)[lab == 2].std(0), 0.3, rtol=0.08)


def _completions_follow_the_conditional(x, n):
    """Known x1 = 2 pins component 1 (mean (2, -2), std 0.3; the others are > 6 std away in x1),
    so the exact conditional of x2 is N(-2, 0.3^2), in its mode with probability ~1. Returns
    the fraction of completions in that mode; those must match N(-2, 0.3^2) within 5 standard
    errors (mean: 0.3/sqrt(m); std: 0.3/sqrt(2m))."""
    np.testing.assert_array_equal(x[:, 0], 2.0)
    right = x[:, 1] < 0.25
    m = int(right.sum())
    assert abs(x[right, 1].mean() + 2.0) < 5 * 0.3 / np.sqrt(m)
    assert abs(x[right, 1].std() - 0.3) < 5 * 0.3 / np.sqrt(2 * m)
    return right.mean()


def test_inpainting_keeps_known_values_and_matches_the_conditional(setup):
    g, proc = setup
    n = 3000
    x_known = jnp.tile(jnp.array([[2.0, 0.0]]), (n, 1))
    mask = jnp.array([1.0, 0.0])
    den = guidance.inpaint(g.denoiser(proc), proc, x_known, mask, jax.random.key(2))
    x = np.asarray(dj.sample(den, proc, proc.prior_sample(jax.random.key(3), (n, 2)),
                             sampler="ddpm", num_steps=200, key=jax.random.key(4),
                             final="denoise"))
    frac = _completions_follow_the_conditional(x, n)
    print(f"inpainting: {frac:.3f} of completions in the conditional's mode")
    # The replacement method is approximate (early on the noised known coordinate carries
    # little information), but it must use it: far more often in the mode than the
    # unconditional weight 0.3, by more than 5 standard errors of a proportion.
    assert frac > 0.3 + 5 * np.sqrt(0.3 * 0.7 / n)


def test_repaint_resampling_beats_replacement(setup):
    g, proc = setup
    n = 3000
    x_known = jnp.tile(jnp.array([[2.0, 0.0]]), (n, 1))
    mask = jnp.array([1.0, 0.0])
    fracs = {}
    for r in (1, 10):  # resample=1 is the replacement method with the same ancestral steps
        x = np.asarray(guidance.repaint(g.denoiser(proc), proc, x_known, mask, jax.random.key(2),
                                        num_steps=100, resample=r))
        fracs[r] = _completions_follow_the_conditional(x, n)
    print(f"fraction in the conditional's mode: replacement {fracs[1]:.3f}, RePaint x10 {fracs[10]:.3f}")
    # closer to the exact ~1, by more than 3 standard errors of the difference of proportions
    se = np.sqrt(sum(f * (1 - f) for f in fracs.values()) / n)
    assert fracs[10] - fracs[1] > 3 * se


def test_sdedit_strength_endpoints(setup):
    g, proc = setup
    x0 = g.sample(jax.random.key(0), 2000)[0]
    out0 = guidance.sdedit(g.denoiser(proc), proc, x0, 0.0, jax.random.key(1))
    np.testing.assert_array_equal(out0, x0)
    ones = jnp.ones_like(x0) * 7.0  # far from the data: strength 1 must forget it
    out1 = np.asarray(guidance.sdedit(g.denoiser(proc), proc, ones, 1.0, jax.random.key(1),
                                      num_steps=100))
    lab = np.argmin(((out1[:, None] - g.means[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose([np.mean(lab == k) for k in range(3)], g.weights, atol=0.04)


def test_bad_input(setup):
    g, proc = setup
    den = labelled_denoiser(g, proc)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got values in \[0, 5\]"):
        guidance.classifier_free_guidance(den, jnp.array([0, 5]), 3, 2.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        guidance.inpaint(g.denoiser(proc), proc, jnp.zeros((4, 2)), jnp.ones((3,)), jax.random.key(0))
    with pytest.raises(ValueError, match="does not broadcast"):
        guidance.repaint(g.denoiser(proc), proc, jnp.zeros((4, 2)), jnp.ones((4, 3)), jax.random.key(0))
    with pytest.raises(ValueError, match="strength must be in"):
        guidance.sdedit(g.denoiser(proc), proc, jnp.zeros((4, 2)), 1.5, jax.random.key(0))
