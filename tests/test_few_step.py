"""Few-step generation against ground truth on exact Gaussian mixtures: MeanFlow's one-step map
against the exact flow map (the adaptive solver on the mixture's exact velocity), progressive
distillation's one-step student against its teacher's DDIM endpoint, and flow matching's
velocity objective."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffusion_jax as dj
from diffusion_jax.experiment import from_config
from diffusion_jax.methods.meanflow import MeanFlow, check_times
from diffusion_jax.models import MLP
from diffusion_jax.processes import Flow

# three modes of unequal weight, far apart relative to their spread
MIXTURE = dj.gmm.GaussianMixture(np.array([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]]),
                                 np.full((3, 2), 0.3**2), np.array([0.5, 0.3, 0.2]))
N_EVAL = 4000
STEPS, BATCH = 1000, 256   # training steps on the mixture


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


def test_meanflow_one_step_approaches_the_exact_flow_map_and_two_steps_beat_one(meanflow):
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
    # and two steps beat one in mean log-density under the mixture
    logp = lambda x: float(jnp.mean(MIXTURE.logp(proc, x, 1e-4)))
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


# -- progressive distillation ------------------------------------------------------------------

from diffusion_jax.losses import LossConfig  # noqa: E402
from diffusion_jax.methods.diffusion import Diffusion  # noqa: E402
from diffusion_jax.methods.progressive import ProgressiveDistillation  # noqa: E402
from diffusion_jax.samplers.few_step import ddim, time_of, u_grid  # noqa: E402
from diffusion_jax.parameterization import VPrediction  # noqa: E402
from diffusion_jax.processes import VP  # noqa: E402

PD_START, PD_ROUNDS, PD_ROUND_STEPS = 16, 4, 300
ECT_STEPS = STEPS


@functools.lru_cache(maxsize=1)
def vp_teacher():
    """A v-prediction MLP diffusion model of the mixture on the cosine process (1500 steps): the
    teacher of progressive distillation and consistency tuning here."""
    teacher = Diffusion(MLP(hidden=256, depth=4), VP.cosine(), VPrediction(),
                        LossConfig(t_sampler="antithetic"),
                        optax.adam(optax.cosine_decay_schedule(1e-3, STEPS)), (2,),
                        ema_decay=0.995)
    return teacher, jax.device_get(_fit(teacher, STEPS, BATCH).ema_params)


@pytest.fixture(scope="module")
def distilled():
    """The teacher distilled 16 -> 8 -> 4 -> 2 -> 1."""
    teacher, tp = vp_teacher()
    pd = ProgressiveDistillation(teacher.model, teacher.process, VPrediction(), optax.adam(1e-4),
                                 (2,), lambda: tp, PD_START, PD_ROUNDS, PD_ROUND_STEPS,
                                 ema_decay=0.99)
    state = _fit(pd, PD_ROUNDS * PD_ROUND_STEPS, BATCH)
    return pd, pd.sample_params(state), tp


def test_pd_students_land_on_the_teachers_ddim_endpoint(distilled):
    """The 1-step student (after 4 rounds) and the 2-step one (the last round's teacher) against
    the teacher's 16-step DDIM endpoint from the same noise. Derived thresholds: each student is
    nearer that endpoint than the teacher itself at twice the student's NFE, and the 1-step
    student nearer than the teacher at 4."""
    pd, params, tp = distilled
    proc = pd.process
    x_T = proc.prior_sample(jax.random.key(5), (N_EVAL, 2))
    teacher = lambda n: ddim(pd.denoiser(tp), proc, x_T, n)
    ref = teacher(PD_START)
    one, two = (pd.sample(params, jax.random.key(5), N_EVAL, n) for n in (1, 2))
    np.testing.assert_array_equal(x_T, proc.prior_sample(jax.random.key(5), (N_EVAL, 2)))
    print(f"RMSE to the teacher's 16-step endpoint: student 1 step {rmse(one, ref):.3f}, 2 steps "
          f"{rmse(two, ref):.3f}; teacher 2 {rmse(teacher(2), ref):.3f}, 4 "
          f"{rmse(teacher(4), ref):.3f}")
    assert rmse(one, ref) < rmse(teacher(2), ref)
    assert rmse(one, ref) < rmse(teacher(4), ref)
    assert rmse(two, ref) < rmse(teacher(4), ref)
    logp = lambda x: float(jnp.mean(MIXTURE.logp(proc, x, proc.t_min)))
    assert logp(two) > logp(one)


def test_pd_ddim_is_the_librarys_ddim_with_a_final_denoise():
    """``progressive.ddim`` over ``u_grid(n)`` is the library's DDIM on those times (n - 1 steps)
    plus the final denoising call: the same ``n`` evaluations, the same numbers."""
    proc = VP.cosine()
    den = MIXTURE.denoiser(proc)
    x = proc.prior_sample(jax.random.key(0), (64, 2))
    for n in (2, 4, 8):
        ts = np.array([float(time_of(proc, u)) for u in u_grid(n)])
        lib = dj.sample(den, proc, x, sampler="ddim", ts=ts, final="denoise")
        np.testing.assert_allclose(ddim(den, proc, x, n), lib, rtol=1e-5, atol=1e-5)


def _pd_config(teacher: str, steps: int = 4):
    from conftest import _config

    from ml_collections import ConfigDict

    cfg = _config("fashion_mnist_pd.py", [])
    cfg.data = ConfigDict(dict(dataset="gmm:ring", data_dir="", dim=2, image_size=0, channels=0,
                               random_flip=False, num_classes=8))
    return _config_overrides(cfg, [
        f"progressive.teacher='{teacher}'", "progressive.start_steps=4",
        "progressive.rounds=2", "progressive.round_steps=2", f"train.steps={steps}",
        "train.batch_size=8", "train.log_every=1", "train.ckpt_every=1", "sample.num=16"])


def _config_overrides(cfg, overrides):
    from diffusion_jax.config import apply_override

    for o in overrides:
        apply_override(cfg, o)
    return cfg


def test_pd_run_stopped_mid_round_resumes_bit_identically(configs, tmp_path, capsys):
    """Through the loop: a 2-round schedule (2 steps each) stopped at step 3, inside round 2 and
    after the teacher swap, then resumed, equals the uninterrupted run leaf for leaf (student,
    EMA, optimizer, teacher); ``sample --steps`` past the trained count gets a note."""
    from diffusion_jax.methods.base import SampleRequest
    from diffusion_jax.train.loop import train
    from test_train import _params

    teacher = tmp_path / "teacher"
    train(from_config(configs.toy(steps=2)), str(teacher))
    full = train(from_config(_pd_config(str(teacher))), str(tmp_path / "full"))
    exp = from_config(_pd_config(str(teacher)))
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, steps=3))
    train(exp, str(tmp_path / "split"))
    split = train(from_config(_pd_config(str(teacher))), str(tmp_path / "split"))
    assert full["step"] == split["step"] == 4
    (_, a, da), (_, b, db) = _params(tmp_path / "full"), _params(tmp_path / "split")
    assert da == db
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))
    # after round 2's first step the teacher is the round-1 student, not the original teacher
    from diffusion_jax.workdir import load
    _, params, _ = load(tmp_path / "full")
    t0 = jax.tree_util.tree_leaves(load(teacher)[1])
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(
        params["previous"]), t0))
    method = from_config(_pd_config(str(teacher))).method
    capsys.readouterr()
    assert method.sample_controls(SampleRequest(steps=4)) == {"steps": 4}
    assert "distilled for 1 steps (its teacher took 4)" in capsys.readouterr().err


def test_pd_bad_schedules_are_one_line(configs, tmp_path):
    from diffusion_jax.config import apply_override
    from diffusion_jax.experiment import ConfigError

    teacher = tmp_path / "teacher"
    from diffusion_jax.train.loop import train
    train(from_config(configs.toy(steps=1)), str(teacher))
    cfg = _pd_config(str(teacher))
    apply_override(cfg, "progressive.start_steps=6")
    with pytest.raises(ConfigError, match=r"rounds=2 halvings do not divide .*start_steps=6"):
        from_config(cfg)
    cfg = _pd_config(str(teacher), steps=5)
    with pytest.raises(ConfigError, match=r"train.steps=5 but the schedule is 2 rounds of 2"):
        from_config(cfg)
    cfg = _pd_config(str(teacher))
    apply_override(cfg, "data.dim=3")
    with pytest.raises(ConfigError, match="was trained on data of shape"):
        from_config(cfg)


@pytest.mark.slow  # 60-70 s: two consistency models and a teacher (the suite's time budget)
def test_ect_from_the_teacher_beats_ct_from_scratch_at_the_same_budget():
    """Consistency tuning (ECT) initialised from the diffusion teacher against consistency
    training from scratch, 1000 steps each, same network and optimizer: the 1-step map against
    the teacher's own PF-ODE endpoint (dopri5). Derived thresholds: ECT must beat CT from scratch
    and the teacher's own 2-step DDIM; its 2 steps beat its 1 in mean log-density."""
    from diffusion_jax.methods.consistency import ConsistencyMethod

    teacher, tp = vp_teacher()
    proc = teacher.process
    den = teacher.denoiser(tp)
    x_T = proc.prior_sample(jax.random.key(7), (N_EVAL, 2))
    ref = dj.sample(den, proc, x_T, sampler="ode_dopri5")
    out = {}
    for mode in ("ect", "ct"):
        m = ConsistencyMethod(teacher.model, proc, VPrediction(), optax.adam(
            optax.cosine_decay_schedule(1e-4, ECT_STEPS)), (2,), mode=mode,
            teacher_loader=lambda: tp, loss="pseudo_huber", s0=10, s1=160,
            total_steps=ECT_STEPS, ema_decay=0.99)
        params = _fit(m, ECT_STEPS, BATCH).ema_params
        out[mode] = [m.sample(params, jax.random.key(7), N_EVAL, steps=k) for k in (1, 2)]
    print(f"RMSE to the teacher's ODE endpoint, 1 step: ECT {rmse(out['ect'][0], ref):.3f}, CT "
          f"{rmse(out['ct'][0], ref):.3f}; teacher DDIM 2 steps {rmse(ddim(den, proc, x_T, 2), ref):.3f}")
    assert rmse(out["ect"][0], ref) < rmse(out["ct"][0], ref)
    assert rmse(out["ect"][0], ref) < rmse(ddim(den, proc, x_T, 2), ref)
    logp = lambda x: float(jnp.mean(MIXTURE.logp(proc, x, proc.t_min)))
    assert logp(out["ect"][1]) > logp(out["ect"][0])


def test_ect_gap_starts_at_the_data_and_shrinks_by_q_per_stage():
    from diffusion_jax import consistency_math as C

    s = jnp.array([0.1, 1.0, 10.0])
    np.testing.assert_array_equal(C.ect_gap(s, 0, 800), 0.0)  # stage 0: the denoising loss
    # stages 4 and 5 (the first stages clip s_r at 0 where n(s) / q^k > 1)
    g4, g5 = (s - C.ect_gap(s, k, 800, q=2.0, stages=8) for k in (400, 500))
    np.testing.assert_allclose(g5, g4 / 2, rtol=1e-5)  # the gap halves per stage
    assert bool(jnp.all(C.ect_gap(s, 800, 800) < s)) and bool(jnp.all(C.ect_gap(s, 800, 800) > 0))


# -- rectified flow and reflow -----------------------------------------------------------------

from diffusion_jax.methods.reflow import Reflow  # noqa: E402
from diffusion_jax.parameterization import VelocityPrediction  # noqa: E402

REFLOW_STEPS = 500


def _path_stats(denoise, proc, x_T, n: int = 32):
    """Euler along the learned ODE in ``n`` steps: ``(endpoint, mean squared curvature)``, the
    curvature being ``|v(x_t, t) - chord|^2`` averaged over the path (Liu et al.'s straightness;
    0 for straight paths), ``chord`` the straight line from ``x_T`` to the endpoint."""
    ts = np.linspace(proc.t_max, proc.t_min, n + 1)
    x, vs = x_T, []
    for t, s in zip(ts, ts[1:]):
        v = (x - denoise(x, jnp.full(x.shape[:1], t))) / t
        vs.append(v)
        x = x - (t - s) * v
    chord = (x_T - x) / (ts[0] - ts[-1])
    return x, float(jnp.mean(jnp.stack([jnp.sum((v - chord) ** 2, -1) for v in vs])))


@pytest.fixture(scope="module")
def reflowed():
    proc = Flow()
    first = Diffusion(MLP(hidden=256, depth=4), proc, VelocityPrediction(),
                      LossConfig(t_sampler="logit_normal", p_mean=0.0, p_std=1.0),
                      optax.adam(optax.cosine_decay_schedule(1e-3, STEPS)), (2,),
                      ema_decay=0.995)
    p1 = jax.device_get(_fit(first, STEPS, BATCH).ema_params)
    # couplings by DPM-Solver++(2M), 6 steps (7 evaluations per pair)
    second = Reflow(first.model, proc, VelocityPrediction(), LossConfig(), optax.adam(
        optax.cosine_decay_schedule(1e-3, REFLOW_STEPS)), (2,), lambda: p1, "dpmpp_2m", 6,
        ema_decay=0.99)
    return first, p1, second, _fit(second, REFLOW_STEPS, BATCH).ema_params


def test_reflow_straightens_the_paths_and_its_one_step_lands(reflowed):
    """The 2-rectified flow against the 1-rectified flow it was trained from: the mean squared
    curvature of its ODE paths falls, and one Euler step of it lands nearer the 1-RF's coupling
    map (the sampler that made its training pairs) than two Euler steps of the 1-RF do."""
    first, p1, second, p2 = reflowed
    proc = first.process
    x_T = proc.prior_sample(jax.random.key(3), (N_EVAL, 2))
    ref = second.couple(p1, x_T / proc.sigma(proc.t_max), jax.random.key(0))
    _, curv1 = _path_stats(first.denoiser(p1), proc, x_T)
    _, curv2 = _path_stats(second.denoiser(p2), proc, x_T)
    one1, two1 = (ddim(first.denoiser(p1), proc, x_T, n) for n in (1, 2))
    one2 = second.sample(p2, jax.random.key(3), N_EVAL, steps=1)
    print(f"curvature 1-RF {curv1:.3f}, 2-RF {curv2:.3f}; RMSE to the coupling map: 1-RF 1 step "
          f"{rmse(one1, ref):.3f}, 2 steps {rmse(two1, ref):.3f}; 2-RF 1 step "
          f"{rmse(one2, ref):.3f}")
    assert curv2 < curv1
    assert rmse(one2, ref) < rmse(two1, ref)
    logp = lambda x: float(jnp.mean(MIXTURE.logp(proc, x, proc.t_min)))
    assert logp(second.sample(p2, jax.random.key(3), N_EVAL, steps=2)) > logp(one2)
