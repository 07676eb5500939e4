"""Few-step generation against ground truth on exact Gaussian mixtures: MeanFlow's one-step map
against the exact flow map (the adaptive solver on the mixture's exact velocity), progressive
distillation's one-step student against its teacher's DDIM endpoint, and flow matching's
velocity objective."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffusion_jax as dj
from diffusion_jax.methods.meanflow import MeanFlow, check_times
from diffusion_jax.models import MLP
from diffusion_jax.processes import Flow

# three modes of unequal weight, far apart relative to their spread
MIXTURE = dj.gmm.GaussianMixture(np.array([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]]),
                                 np.full((3, 2), 0.3**2), np.array([0.5, 0.3, 0.2]))
N_EVAL = 4000
STEPS, BATCH = 1500, 256   # MeanFlow's training on the mixture (~25 s on 2 cores)


def _fit(method, steps: int, batch: int = 512, seed: int = 0):
    state = jax.jit(method.init)(jax.random.key(seed))
    step = jax.jit(method.train_step)
    for i in range(steps):
        x = MIXTURE.sample(jax.random.key(10_000 + i), batch)[0]
        state, _ = step(state, {"image": x, "label": jnp.zeros(batch, jnp.int32)},
                        jax.random.key(seed + 1))
    return state


def _euler(velocity, x, ts):
    for t, r in zip(ts, ts[1:]):
        x = x - (t - r) * velocity(x, t)
    return x


def rmse(a, b) -> float:
    return float(jnp.sqrt(jnp.mean(jnp.sum((a - b) ** 2, axis=-1))))


@pytest.fixture(scope="module")
def meanflow():
    m = MeanFlow(MLP(hidden=256, depth=4, time_scale=100.0), optax.adam(
        optax.cosine_decay_schedule(1e-3, STEPS)), (2,), ema_decay=0.995, ratio=0.75, p_mean=0.0)
    return m, _fit(m, STEPS, BATCH).ema_params


def test_meanflow_one_step_approaches_the_exact_flow_map(meanflow):
    """``z - u(z, 0, 1)`` against the exact flow map from ``t = 1`` to ``0`` (dopri5 on the
    mixture's exact velocity). The threshold is derived, not tuned: one MeanFlow evaluation must
    land nearer the exact endpoint than the *exact* velocity integrated by Euler with the same
    NFE, and two MeanFlow evaluations nearer than exact Euler with 2."""
    m, params = meanflow
    e = jax.random.normal(jax.random.key(7), (N_EVAL, 2))
    proc = Flow(t_min=1e-4, t_max=0.9999)
    exact = dj.sample(MIXTURE.denoiser(proc), proc, e, sampler="ode_dopri5")
    den = MIXTURE.denoiser(Flow(t_min=0.0, t_max=1.0))
    v = lambda x, t: (x - den(x, jnp.full(x.shape[:1], t))) / t
    one, two = m.sample(params, jax.random.key(7), N_EVAL, steps=1), m.sample(
        params, jax.random.key(7), N_EVAL, steps=2)
    np.testing.assert_allclose(one, e - m.u(params, e, jnp.zeros(N_EVAL), jnp.ones(N_EVAL)),
                               atol=1e-5)
    euler1, euler2 = _euler(v, e, (1.0, 0.0)), _euler(v, e, (1.0, 0.5, 0.0))
    print(f"RMSE to the exact flow map: MeanFlow 1 NFE {rmse(one, exact):.3f}, 2 NFE "
          f"{rmse(two, exact):.3f}; exact velocity + Euler 1 NFE {rmse(euler1, exact):.3f}, "
          f"2 NFE {rmse(euler2, exact):.3f}")
    assert rmse(one, exact) < rmse(euler1, exact)
    assert rmse(two, exact) < rmse(euler2, exact)
    assert rmse(one, exact) < rmse(euler2, exact)


def test_meanflow_two_steps_beat_one_in_log_density(meanflow):
    m, params = meanflow
    proc = Flow(t_min=1e-4, t_max=0.9999)
    logp = lambda x: float(jnp.mean(MIXTURE.logp(proc, x, 1e-4)))
    one, two = (m.sample(params, jax.random.key(11), N_EVAL, steps=s) for s in (1, 2))
    assert logp(two) > logp(one)


def test_meanflow_target_is_the_total_derivative():
    """The JVP inside the loss is ``v . grad_z u + d_t u``: equal to central finite differences
    along ``(z + h v, t + h)`` (``r`` fixed) on a random network."""
    m = MeanFlow(MLP(hidden=32, depth=2, time_scale=100.0), optax.adam(1e-3), (2,))
    params = m.init(jax.random.key(0)).params  # perturbed: the output layer starts at zero
    leaves, tree = jax.tree_util.tree_flatten(params)
    params = tree.unflatten([p + 0.3 * jax.random.normal(jax.random.key(i), p.shape)
                             for i, p in enumerate(leaves)])
    z, v = jax.random.normal(jax.random.key(1), (64, 2)), jax.random.normal(jax.random.key(2), (64, 2))
    r, t = m.times(jax.random.key(3), 64)
    fn = lambda z_, r_, t_: m.u(params, z_, r_, t_)
    _, dudt = jax.jvp(fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
    h = 1e-3
    fd = (fn(z + h * v, r, t + h) - fn(z - h * v, r, t - h)) / (2 * h)
    assert float(jnp.max(jnp.abs(fd - dudt))) < 3e-2 * float(jnp.max(jnp.abs(dudt)))
    assert bool(jnp.all(r <= t)) and 0 < float(jnp.mean(r < t)) < 0.5  # ratio 0.25 of r != t


def test_meanflow_bad_times_are_one_line():
    for times, msg in [((1.0, 0.6, 0.7, 0.0), "r=0.7 after t=0.6"),
                       ((0.9, 0.0), "must run from 1.0"), ((1.0, 1.0, 0.0), "r=1.0 after t=1.0")]:
        with pytest.raises(ValueError, match=msg):
            check_times(times)
    assert check_times([1, 0.5, 0]) == (1.0, 0.5, 0.0)
