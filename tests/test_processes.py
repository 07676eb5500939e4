import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax import processes as P

ALL = [P.VP.linear(), P.VP.cosine(), P.SubVP(), P.VE(), P.EDM(), P.Flow(), P.DiscreteVP(),
       P.DiscreteVP("scaled_linear", beta_start=0.00085, beta_end=0.012),
       P.DiscreteVP("cosine")]


def _ts(p, n=50):
    return jnp.linspace(p.t_min, p.t_max, n)


@pytest.mark.parametrize("p", ALL, ids=lambda p: repr(p)[:40])
def test_logsnr_is_decreasing_and_inverts(p):
    with jax.enable_x64(True):
        t = _ts(p).astype(jnp.float64)
        lam = p.logsnr(t)
        assert np.all(np.diff(np.asarray(lam)) < 0)
        np.testing.assert_allclose(p.t_of_logsnr(lam), t, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(lam, 2 * (jnp.log(p.alpha(t)) - jnp.log(p.sigma(t))), atol=1e-6)


@pytest.mark.parametrize("p", [P.VP.linear(), P.VP.cosine(), P.DiscreteVP()], ids=str)
def test_vp_identity(p):
    t = _ts(p)
    np.testing.assert_allclose(p.alpha(t) ** 2 + p.sigma(t) ** 2, 1.0, rtol=1e-5)


def test_closed_forms():
    with jax.enable_x64(True):
        t = jnp.linspace(1e-3, 1, 20, dtype=jnp.float64)
        vp = P.VP.linear()
        beta = 0.1 + t * 19.9
        np.testing.assert_allclose(vp.f(t), -0.5 * beta, rtol=1e-10)   # VP SDE drift -beta/2
        np.testing.assert_allclose(vp.g2(t), beta, rtol=1e-10)         # and diffusion beta
        sub = P.SubVP()
        np.testing.assert_allclose(sub.g2(t), beta * -jnp.expm1(-2 * (0.1 * t + 9.95 * t**2)),
                                   rtol=1e-8)
        ve = P.VE(0.01, 50.0)
        s = ve.sigma(t)
        np.testing.assert_allclose(ve.g2(t), 2 * s**2 * np.log(5000.0), rtol=1e-10)
        np.testing.assert_allclose(P.EDM().g2(t), 2 * t, rtol=1e-10)


def test_discrete_vp_matches_ddpm_alphas_cumprod():
    p = P.DiscreteVP()
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    n = np.array([0, 10, 499, 999])
    np.testing.assert_allclose(p.alpha((n + 1) / 1000.0) ** 2, abar[n], rtol=1e-4)
    assert list(p.timestep((n + 1) / 1000.0)) == list(n)


def test_marginal_and_prior():
    p = P.VP.linear()
    x0 = jnp.ones((4, 3))
    eps = jnp.zeros((4, 3))
    np.testing.assert_allclose(p.marginal(x0, jnp.full((4,), 0.5), eps), p.alpha(0.5) * x0, rtol=1e-6)
    # per-example times with non-zero noise: each row its own alpha and sigma
    t = jnp.array([0.1, 0.3, 0.6, 0.9])
    x0 = jax.random.normal(jax.random.key(1), (4, 2, 3))
    eps = jax.random.normal(jax.random.key(2), (4, 2, 3))
    want = np.stack([float(p.alpha(ti)) * x0[i] + float(p.sigma(ti)) * eps[i] for i, ti in enumerate(t)])
    np.testing.assert_allclose(p.marginal(x0, t, eps), want, rtol=1e-5, atol=1e-6)
    # the prior's std: sigma(t_max) within 5 standard errors of a std estimate from 8192 values
    x = p.prior_sample(jax.random.key(0), (4096, 2))
    assert abs(float(jnp.std(x)) - float(p.sigma(1.0))) < 5 * float(p.sigma(1.0)) / np.sqrt(2 * 8192)


def test_bad_input():
    with pytest.raises(ValueError, match="valid"):
        P.make_process("vp_quadratic")
    with pytest.raises(ValueError, match="outside"):
        P.VE().check_t(2.0)
    with pytest.raises(ValueError, match="scaled_linear"):
        P.discrete_betas("quad", 10, 0.1, 0.2)
