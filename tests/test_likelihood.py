import jax
import jax.numpy as jnp
import numpy as np

import diffusion_jax as dj
from diffusion_jax import likelihood
from diffusion_jax import processes as P


def test_exact_trace_matches_gaussian_logdensity():
    with jax.enable_x64(True):
        g = dj.gmm.gaussian(3)
        proc = P.VP.linear()
        x = g.sample(jax.random.key(0), 16, jnp.float64)[0]
        logp, stats = likelihood.log_likelihood(g.denoiser(proc), proc, x, trace="exact",
                                                rtol=1e-8, atol=1e-8,
                                                prior_logp=lambda y: g.logp(proc, y, proc.t_max))
        exact = g.logp(proc, x, proc.t_min)
        assert float(jnp.max(jnp.abs(logp - exact))) / 3 < 1e-3
        assert int(stats["nfe"]) > 0


def test_hutchinson_is_unbiased_within_three_standard_errors():
    with jax.enable_x64(True):
        g = dj.gmm.random_mixture(8, 3, 0.4, seed=3)
        proc = P.VE()
        x1 = g.sample(jax.random.key(0), 1, jnp.float64)[0]
        x = jnp.repeat(x1, 256, axis=0)  # one point, 256 independent trace probes
        for trace in ("rademacher", "gaussian"):
            logp, _ = likelihood.log_likelihood(g.denoiser(proc), proc, x, trace=trace,
                                                key=jax.random.key(7), rtol=1e-6, atol=1e-6,
                                                prior_logp=lambda y: g.logp(proc, y, proc.t_max))
            exact = float(g.logp(proc, x1, proc.t_min)[0])
            se = float(jnp.std(logp)) / np.sqrt(len(logp))
            assert abs(float(jnp.mean(logp)) - exact) < 3 * se + 1e-3, (trace, exact, se)


def test_bits_per_dim_of_uniform_density_is_eight():
    # Uniform density on [-1, 1)^D is log p = -D log 2: dequantised 8-bit data needs 8 bits/dim.
    d = 10
    assert np.isclose(float(likelihood.bits_per_dim(jnp.array(-d * np.log(2.0)), d)), 8.0)
    y = jnp.arange(256)
    x = likelihood.dequantize(jax.random.key(0), y)
    assert float(x.min()) >= -1 and float(x.max()) < 1
    assert np.all(np.floor((np.asarray(x) + 1) * 128) == np.asarray(y))
