"""The denoising loss at the exact denoiser equals the posterior variance (single Gaussian)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax import losses
from diffusion_jax import parameterization as Z


@pytest.mark.parametrize("par", [Z.X0Prediction(), Z.EpsPrediction(), Z.VPrediction(), Z.EDMPrecond()],
                         ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("t_sampler", ["uniform", "antithetic", "lognormal"])
def test_loss_at_the_exact_denoiser_is_the_posterior_variance(par, t_sampler):
    _check_posterior_variance(par, dj.processes.VP.cosine(), t_sampler)


@pytest.mark.parametrize("t_sampler", ["uniform", "logit_normal"])
def test_flow_matching_loss_at_the_exact_velocity_is_the_posterior_variance(t_sampler):
    """Velocity prediction on the flow process (the rectified-flow / SD3 objective), with SD3's
    logit-normal times."""
    _check_posterior_variance(Z.VelocityPrediction(), dj.processes.Flow(), t_sampler, 0.0, 1.0)


def test_logit_normal_times_have_the_stated_law():
    proc = dj.processes.Flow()
    t = losses.sample_t(jax.random.key(0), 50_000, proc, "logit_normal", 0.5, 0.8)
    u = (t - proc.t_min) / (proc.t_max - proc.t_min)
    z = np.log(u / (1 - u))
    assert abs(z.mean() - 0.5) < 0.02 and abs(z.std() - 0.8) < 0.02


def _check_posterior_variance(par, proc, t_sampler, p_mean=-1.2, p_std=1.2):
    v = 0.7**2
    g = dj.gmm.gaussian(4, mean=0.3, std=0.7)
    den = g.denoiser(proc)
    from diffusion_jax.processes import _bcast

    def apply_fn(params, net_x, net_t, y, train, rngs):
        # an "oracle network": the parameterization's target computed from the exact denoiser
        t = state["t"]
        a, s = _bcast(proc.alpha(t), net_x), _bcast(proc.sigma(t), net_x)
        x_t = state["x_t"]
        x0 = den(x_t, t)
        return par.target(x0, (x_t - a * x0) / s, a, s)

    state = {}
    n = 20000
    x0 = g.sample(jax.random.key(0), n)[0]
    key = jax.random.key(1)
    # Recompute x_t exactly as denoising_loss does, so the oracle sees the same noisy input.
    k_t, k_eps, _ = jax.random.split(key, 3)
    t = losses.sample_t(k_t, n, proc, t_sampler, p_mean, p_std)
    eps = jax.random.normal(k_eps, x0.shape)
    state["t"], state["x_t"] = t, proc.marginal(x0, t, eps)
    cfg = losses.LossConfig(weighting="simple", t_sampler=t_sampler, p_mean=p_mean, p_std=p_std)
    loss, aux = losses.denoising_loss(apply_fn, None, x0, key, proc, par, cfg)
    a, s = proc.alpha(t), proc.sigma(t)
    post_var = v * s**2 / (a**2 * v + s**2)  # Var[x0 | x_t] per dimension
    want = post_var / par.loss_scale(a, s)  # the same error in the network's output space
    got = aux["per_example"]
    assert float(jnp.abs(jnp.mean(got) - jnp.mean(want))) < 0.03 * float(jnp.mean(want)) + 1e-6
    assert bool(jnp.all(t >= proc.t_min)) and bool(jnp.all(t <= proc.t_max))


def test_weightings():
    proc, t = dj.processes.EDM(), jnp.array([0.1, 1.0, 10.0])
    w = losses.weight(losses.LossConfig(weighting="edm"), proc, Z.X0Prediction(), t)
    np.testing.assert_allclose(w, (t**2 + 0.25) / (t**2 * 0.25), rtol=1e-5)  # EDM's lambda(sigma)
    w = losses.weight(losses.LossConfig(weighting="edm"), proc, Z.EDMPrecond(), t)
    np.testing.assert_allclose(w, 1.0)
    vp = dj.processes.VP.linear()
    tt = jnp.array([0.2, 0.6])
    w = losses.weight(losses.LossConfig(weighting="likelihood"), vp, Z.EpsPrediction(), tt)
    np.testing.assert_allclose(w, vp.g2(tt) / vp.sigma(tt) ** 2, rtol=1e-4)  # g^2 |eps err|^2/sigma^2
    with pytest.raises(ValueError, match="unknown weighting"):
        losses.LossConfig(weighting="snr")


def test_eps_weighting_of_an_x0_output_is_the_noise_error():
    """``weighting="eps"`` on an x0-predicting network = the squared error of its implied noise
    (what a pretrained epsilon model was trained on), at every t."""
    proc = dj.processes.DiscreteVP()
    t = jnp.array([0.05, 0.5, 0.95])
    a, s = proc.alpha(t), proc.sigma(t)
    w = losses.weight(losses.LossConfig(weighting="eps"), proc, Z.X0Prediction(), t)
    x0, x0_hat, eps = 0.3, -0.2, 1.1
    x_t = a * x0 + s * eps
    eps_hat = (x_t - a * x0_hat) / s
    # float32: eps_hat - eps comes from a cancellation in x_t (~1e-7 absolute on 0.01)
    np.testing.assert_allclose(w * (x0_hat - x0) ** 2, (eps_hat - eps) ** 2, rtol=1e-4)
