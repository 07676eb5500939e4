"""Step caching in the one-scan driver (``sample(..., cache_every=)``): with every step calling
the network it is the plain sampler bit for bit; a skipped step costs no network call, and the
NFE the library reports is the calls made."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax import processes as P
from diffusion_jax.samplers import cache_schedule, run, total_nfe
from diffusion_jax.samplers.driver import resolve_sampler

G, PROC = dj.gmm.random_mixture(4, 5, 0.3, seed=1), P.VP.linear()


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "unipc"])
def test_a_schedule_calling_every_step_is_the_plain_sampler_bit_for_bit(name):
    den = G.denoiser(PROC)
    x_T = PROC.prior_sample(jax.random.key(0), (16, 4))
    ts = dj.make_grid(PROC, 8, "logsnr")
    key = jax.random.key(1)
    obj = resolve_sampler(name)
    plain = jax.jit(lambda x: run(obj, den, PROC, x, ts, key)[0])(x_T)
    cached = jax.jit(lambda x: run(obj, den, PROC, x, ts, key, calls=(True,) * 8)[0])(x_T)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(cached))


def test_skipped_steps_make_no_network_call_and_nfe_counts_the_calls():
    den = G.denoiser(PROC)
    x_T = PROC.prior_sample(jax.random.key(0), (16, 4))
    seen = []
    x = dj.sample(den, PROC, x_T, sampler="dpmpp_2m", num_steps=10, cache_every=3,
                  callback=lambda i, t, x, x0: seen.append(int(i)))
    assert cache_schedule(10, 3) == (True, False, False, True, False, False, True, False, False,
                                     True)
    assert sorted(seen) == [0, 3, 6, 9, 10]          # the called steps and the final call
    assert total_nfe("dpmpp_2m", 10, cache_every=3) == len(seen) == 5
    assert np.all(np.isfinite(np.asarray(x)))
    plain = dj.sample(den, PROC, x_T, sampler="dpmpp_2m", num_steps=10)
    assert np.abs(np.asarray(x - plain)).max() > 0   # reuse changed the path


def test_a_reused_step_takes_the_last_noise_prediction_at_its_own_point():
    """Two DDIM steps, the second skipped: its x0 is ``(x - sigma eps_0) / alpha`` with the first
    call's eps, i.e. DDIM's second step moves along the same noise direction."""
    den = G.denoiser(PROC)
    x_T = PROC.prior_sample(jax.random.key(3), (8, 4))
    ts = np.array([1.0, 0.6, 0.3])
    out = run(resolve_sampler("ddim"), den, PROC, x_T, ts, jax.random.key(0),
              final_denoise=False, calls=(True, False))[0]
    a, s = PROC.alpha, PROC.sigma
    x0 = den(x_T, jnp.float32(1.0))
    eps = (x_T - a(1.0) * x0) / s(1.0)
    x1 = a(0.6) * x0 + s(0.6) * eps                    # DDIM's first step
    x0_b = (x1 - s(0.6) * eps) / a(0.6)                # the reused prediction
    x2 = a(0.3) * x0_b + s(0.3) * eps
    np.testing.assert_allclose(np.asarray(out), np.asarray(x2), rtol=2e-5, atol=2e-6)


def test_samplers_with_several_calls_per_step_are_refused():
    den = G.denoiser(PROC)
    x_T = PROC.prior_sample(jax.random.key(0), (4, 4))
    for name in ("heun", "ode_dopri5", "restart", "dpmpp_2s"):
        with pytest.raises(ValueError, match=f"--cache-every reuses a step's one network call; "
                                             f"sampler {name}"):
            dj.sample(den, PROC, x_T, sampler=name, num_steps=4, cache_every=2)
    with pytest.raises(ValueError, match="cache_every must be >= 1"):
        dj.sample(den, PROC, x_T, sampler="ddim", num_steps=4, cache_every=0)


def test_ddim_reusing_its_first_prediction_is_the_one_step_ddim():
    """DDIM along a constant noise prediction is path-independent: 6 steps calling the network
    only at the first equal one DDIM step over the same end points (a closed form for the
    reuse path)."""
    den = G.denoiser(PROC)
    x_T = PROC.prior_sample(jax.random.key(5), (32, 4))
    six = dj.sample(den, PROC, x_T, sampler="ddim", num_steps=6, cache_every=6)
    one = dj.sample(den, PROC, x_T, sampler="ddim", num_steps=1)
    np.testing.assert_allclose(np.asarray(six), np.asarray(one), rtol=1e-4, atol=1e-5)
    assert total_nfe("ddim", 6, cache_every=6) == total_nfe("ddim", 1) == 2
