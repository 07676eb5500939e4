import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import parameterization as Z
from diffusion_jax import processes as P


@pytest.mark.parametrize("name", sorted(Z.PARAMETERIZATIONS))
@pytest.mark.parametrize("proc", [P.VP.linear(), P.VE(), P.EDM(), P.Flow()], ids=str)
def test_target_round_trips_to_x0(name, proc):
    if name == "velocity" and not isinstance(proc, P.Flow):
        pytest.skip("velocity prediction is defined on the linear interpolant (flow) only")
    par = Z.make_parameterization(name)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k1, (6, 5))
    eps = jax.random.normal(k2, (6, 5))
    t = jnp.linspace(proc.t_min * 2, proc.t_max * 0.9, 6)[:, None]
    a, s = proc.alpha(t), proc.sigma(t)
    x_t = a * x0 + s * eps
    out = par.target(x0, eps, a, s)
    np.testing.assert_allclose(par.to_x0(out, x_t, a, s), x0, rtol=2e-3, atol=2e-3)
    # loss_scale turns output-space errors into x0-space errors
    d = 0.01 * jax.random.normal(jax.random.key(3), out.shape)
    err_x0 = par.to_x0(out + d, x_t, a, s) - x0
    np.testing.assert_allclose(err_x0**2, par.loss_scale(a, s) * d**2, rtol=2e-2, atol=1e-7)


def test_edm_scalings_match_paper():
    par = Z.EDMPrecond(sigma_data=0.5)
    s = jnp.array([0.1, 1.0, 10.0])
    c = par.scalings(jnp.ones(3), s)
    np.testing.assert_allclose(c.c_skip, 0.25 / (s**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c.c_out, s * 0.5 / jnp.sqrt(s**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c.c_in, 1 / jnp.sqrt(s**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c.c_noise, np.log(s) / 4, rtol=1e-6)
    # a VP-style (alpha, sigma) with the same ratio gives the same coefficients
    c2 = par.scalings(jnp.full(3, 0.5), 0.5 * s)
    np.testing.assert_allclose(c2.c_skip, c.c_skip, rtol=1e-6)


def test_make_denoiser_feeds_network_and_converts():
    proc, par = P.VP.linear(), Z.EpsPrediction()
    seen = {}

    def net(x, t):
        seen["t"] = t
        return jnp.zeros_like(x)  # eps_hat = 0  ->  x0_hat = x / alpha

    den = Z.make_denoiser(net, proc, par)
    x = jnp.ones((3, 2, 2, 1))
    out = den(x, 0.5)
    assert seen["t"].shape == (3,)
    np.testing.assert_allclose(out, x / proc.alpha(0.5), rtol=1e-6)
