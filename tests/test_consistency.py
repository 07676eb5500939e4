"""Consistency models against ground truth: on an exact-score Gaussian mixture the consistency
function is the probability-flow ODE map, computed here with the adaptive solver. A small MLP
distilled from the exact ring denoiser must land near the exact ODE endpoint in one step, and two
steps must bring the samples' density closer to the data's."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_jax import consistency_math as C
from diffusion_jax import gmm, processes
from diffusion_jax.conditioning import Conditioning
from diffusion_jax.methods.consistency import ConsistencyMethod
from diffusion_jax.models import MLP
from diffusion_jax.parameterization import make_denoiser, make_parameterization
from diffusion_jax.samplers import make_grid, sample


def test_the_boundary_condition_holds_exactly_for_any_network():
    process = processes.make_process("vp_cosine")
    f = C.consistency_function(lambda x, t: jnp.full_like(x, 7.0), process)
    x = jax.random.normal(jax.random.key(0), (4, 3))
    np.testing.assert_allclose(f(x, process.t_min), x / process.alpha(process.t_min), rtol=1e-6)
    # at high noise f is (almost) the denoiser
    np.testing.assert_allclose(f(x, process.t_max), 7.0, atol=0.05)


def test_the_exact_consistency_target_is_the_ode_map_and_the_loss_vanishes_on_it():
    """With f := the exact PF-ODE map (dopri5 on the exact denoiser), the distillation loss of one
    adjacent pair is only the teacher step's discretisation error: small against the distance a
    wrong f (the one-step denoiser) gives."""
    mix, process = gmm.ring(), processes.make_process("vp_linear")
    den = mix.denoiser(process)
    ode_map = lambda x, t: sample(den, process, x, sampler="ode_dopri5",
                                  ts=np.array([float(t), process.t_min]), final="ode")
    ts = make_grid(process, 40, "karras")
    x0, _ = mix.sample(jax.random.key(0), 256)
    n = 5
    x_t = process.alpha(ts[n]) * x0 + process.sigma(ts[n]) * jax.random.normal(jax.random.key(1), x0.shape)
    from diffusion_jax.samplers import resolve_sampler, run
    x_next, _ = run(resolve_sampler("heun"), den, process, x_t, jnp.asarray(ts[n:n + 2]),
                    jax.random.key(2), final_denoise=False)
    exact = float(jnp.mean(C.distance(ode_map(x_t, ts[n]), ode_map(x_next, ts[n + 1]))))
    jump = float(jnp.mean(C.distance(den(x_t, ts[n]), den(x_next, ts[n + 1]))))
    assert exact < 1e-3 * jump


@pytest.mark.parametrize("s", [0.05, 0.2, 0.8])
def test_the_exact_consistency_map_asks_the_network_for_a_denoiser_near_the_exact_one(s):
    """Conditioning, against ground truth: the denoiser ``D`` a network must output for ``f`` to be
    the exact PF-ODE map (``f* = x_{t_min} / alpha(t_min)``, dopri5 on the exact ring denoiser),
    solved from the form ``f = a(s) y + r(s) D``. With the c_out-based form it stays as close to
    the exact denoiser ``D*`` as ``f*`` itself is (``r`` is nearly 1 away from ``s_min``); the
    ``(1 - c_skip) D`` form needs ``1 / (1 - c_skip)`` times that: 1.4x at s = 0.8, 7x at 0.2,
    100x at 0.05, which made multistep sampling worse with every added step."""
    mix, process = gmm.ring(), processes.make_process("vp_linear")
    den = mix.denoiser(process)
    t = float(C.t_of_edm_sigma(process, jnp.asarray(s)))
    x0, _ = mix.sample(jax.random.key(0), 512)
    x = process.alpha(t) * x0 + process.sigma(t) * jax.random.normal(jax.random.key(1), x0.shape)
    f_star = sample(den, process, x, sampler="ode_dopri5", ts=np.array([t, process.t_min]),
                    final_denoise=False) / process.alpha(process.t_min)
    d_star, y = den(x, t), x / process.alpha(t)
    a = C.consistency_function(lambda z, tt: jnp.zeros_like(z), process)(x, t) / y  # a(s)
    r = C.consistency_function(lambda z, tt: jnp.ones_like(z), process)(x, t) - a * y  # r(s)
    needed = (f_star - a * y) / r
    s_min = float(C.edm_sigma(process, jnp.asarray(process.t_min)))
    one_minus_c_skip = (s - s_min) ** 2 / ((s - s_min) ** 2 + C.SIGMA_DATA ** 2)
    needed_old = (f_star - (1 - one_minus_c_skip) * y) / one_minus_c_skip
    gap = lambda v: float(jnp.sqrt(jnp.mean((v - d_star) ** 2)))
    assert gap(needed) <= 1.1 * gap(f_star)
    assert gap(needed_old) >= 0.9 / one_minus_c_skip * gap(f_star)  # the old form, for contrast


def _ring_teacher():
    mix, process = gmm.ring(), processes.make_process("vp_linear")
    return mix, process, mix.denoiser(process)


def _distill(steps=1500, batch=256, num_scales=18, target_decay=0.95, hidden=128, lr=1e-3,
             kind="l2"):
    mix, process, teacher = _ring_teacher()
    model, par = MLP(hidden=hidden, depth=3), make_parameterization("v")
    student = lambda p: C.consistency_function(
        make_denoiser(lambda x, t: model.apply({"params": p}, x, t), process, par), process)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps))
    ts = make_grid(process, num_scales, "karras")

    @jax.jit
    def step(carry, key):
        p, target, opt = carry
        x0, _ = mix.sample(jax.random.fold_in(key, 1), batch)
        loss_fn = lambda q: C.distillation_loss(student(q), student(target), teacher, process,
                                                x0, ts, key, solver="heun", kind=kind)[0]
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, opt = tx.update(g, opt, p)
        p = optax.apply_updates(p, upd)
        target = jax.tree_util.tree_map(lambda a, b: target_decay * a + (1 - target_decay) * b,
                                        target, p)
        return (p, target, opt), loss

    carry = (params, params, tx.init(params))
    carry, _ = jax.lax.scan(step, carry, jax.random.split(jax.random.key(1), steps))
    return mix, process, teacher, student(carry[0])


@pytest.fixture(scope="module")
def distilled():
    return _distill(steps=4000, hidden=128, lr=3e-3, num_scales=18)


GUIDANCE = 1.5


@pytest.fixture(scope="module")
def distilled_guided():
    """Class-conditional CD of the ring's exact guided teacher ``D(x, null) + w (D(x, y) -
    D(x, null))`` (labels = the 8 modes, 10% dropped to the null label 8), through the method's
    own functions (``ConsistencyMethod.guide`` combines the two calls)."""
    mix, process = gmm.ring(), processes.make_process("vp_linear")
    k = mix.num_components
    exact = gmm.labelled_denoiser(mix, process)
    model, par = MLP(hidden=128, depth=3, num_classes=k), make_parameterization("v")
    steps, batch = 3000, 256
    tx = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
    method = ConsistencyMethod(model, process, par, tx, (2,), conditioning=Conditioning(
        num_classes=k, drop_prob=0.1), guidance=GUIDANCE)
    teacher = method.guide(exact)
    ts = make_grid(process, 18, "karras")
    params = method._init(jax.random.key(0)).params

    @jax.jit
    def step(carry, key):
        p, target, opt = carry
        x0, labels = mix.sample(jax.random.fold_in(key, 1), batch)
        y = method.conditioning({"image": x0, "label": labels}, jax.random.fold_in(key, 2))["y"]
        loss_fn = lambda q: C.distillation_loss(method.function(q), method.function(target),
                                                teacher, process, x0, ts, key, "heun", "l2",
                                                (y,))[0]
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, opt = tx.update(g, opt, p)
        p = optax.apply_updates(p, upd)
        target = jax.tree_util.tree_map(lambda a, b: 0.95 * a + 0.05 * b, target, p)
        return (p, target, opt), loss

    carry = (params, params, tx.init(params))
    carry, _ = jax.lax.scan(step, carry, jax.random.split(jax.random.key(1), steps))
    return mix, process, teacher, method, carry[0]


def test_conditional_distillation_of_a_guided_teacher_lands_on_its_ode_endpoint_per_class(
        distilled_guided):
    """For each label, one evaluation of the student against the exact endpoint of the guided
    teacher's ODE (dopri5) from the same noise: the same derived bar as the unconditional test
    (a quarter of the teacher's own one-step jump's error), and >= 90% of the samples in their
    label's mode (the exact posterior at t_min). The null label samples every mode."""
    mix, process, teacher, method, params = distilled_guided
    k, n = mix.num_components, 100
    x_T = jnp.tile(process.prior_sample(jax.random.key(7), (n, 2)), (k, 1))
    y = jnp.repeat(jnp.arange(k), n)  # every label from the same n noises
    endpoint = sample(lambda x, t: teacher(x, t, y), process, x_T, sampler="ode_dopri5",
                      num_steps=1, final="ode")
    one = C.multistep_sample(method.function(params), process, x_T, C.sample_times(process, 1),
                             jax.random.key(8), (y,))
    err = jnp.sum((one - endpoint) ** 2, -1).reshape(k, n)
    jump = jnp.sum((teacher(x_T, process.t_max, y) - endpoint) ** 2, -1).reshape(k, n)
    rmse, rmse_jump = np.sqrt(np.mean(err, axis=1)), np.sqrt(np.mean(jump, axis=1))
    label = jnp.argmax(mix.class_posterior(process, one, process.t_min), axis=-1).reshape(k, n)
    accuracy = np.mean(np.asarray(label) == np.arange(k)[:, None], axis=1)
    print(f"guided CD, per label: 1-step RMSE to the guided ODE endpoint {np.round(rmse, 3)}, "
          f"the teacher's jump {np.round(rmse_jump, 3)}; in the label's mode {accuracy}")
    assert np.all(rmse < 0.25 * rmse_jump) and np.all(accuracy >= 0.9)
    x_T = x_T[:n]
    null = C.multistep_sample(method.function(params), process, x_T, C.sample_times(process, 1),
                              jax.random.key(8), (jnp.full((n,), k),))
    counts = np.bincount(np.asarray(jnp.argmax(mix.class_posterior(process, null, process.t_min),
                                               axis=-1)), minlength=k)
    assert counts.min() >= 0.25 * n / k, counts  # every mode, none starved


def test_distillation_reaches_the_ode_endpoint_in_one_step(distilled):
    mix, process, teacher, f = distilled
    x_T = process.prior_sample(jax.random.key(7), (2000, 2))
    endpoint = sample(teacher, process, x_T, sampler="ode_dopri5", num_steps=1, final="ode")
    rmse = lambda x: float(jnp.sqrt(jnp.mean(jnp.sum((x - endpoint) ** 2, -1))))
    one = C.multistep_sample(f, process, x_T, C.sample_times(process, 1), jax.random.key(8))
    jump = teacher(x_T, process.t_max)  # the teacher's own one-step answer: the mixture's mean
    print(f"CD 1-step endpoint RMSE {rmse(one):.4f}; teacher one-step jump {rmse(jump):.4f}")
    # a quarter of the error of the best constant answer: the student learned the map
    assert rmse(one) < 0.25 * rmse(jump)
    # More steps re-noise and map again: two and four steps must beat one in mean log-density
    # under the data (with the older c_skip y + (1 - c_skip) D form they made it worse: -14.9 at
    # 1 step, -42.6 at 4).
    logp = lambda x: float(jnp.mean(mix.logp(process, x, process.t_min)))
    multi = {k: logp(C.multistep_sample(f, process, x_T, C.sample_times(process, k),
                                        jax.random.key(8))) for k in (2, 4)}
    print(f"mean log p under the data: 1 step {logp(one):.3f}, 2 steps {multi[2]:.3f}, "
          f"4 steps {multi[4]:.3f}")
    assert multi[2] > logp(one) and multi[4] > logp(one)


def test_consistency_training_without_a_teacher_learns_the_ring():
    mix, process = gmm.ring(), processes.make_process("vp_linear")
    model, par = MLP(hidden=128, depth=3), make_parameterization("v")
    student = lambda p: C.consistency_function(
        make_denoiser(lambda x, t: model.apply({"params": p}, x, t), process, par), process)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    steps = 3000
    tx = optax.adam(optax.cosine_decay_schedule(3e-3, steps))

    @jax.jit
    def step(carry, inp):
        p, opt = carry
        k, key = inp
        x0, _ = mix.sample(jax.random.fold_in(key, 1), 256)
        loss, g = jax.value_and_grad(lambda q: C.training_loss(
            student(q), process, x0, k, key, steps, s0=10, s1=160)[0])(p)
        upd, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, upd), opt), loss

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)),
                                  (jnp.arange(steps), jax.random.split(jax.random.key(1), steps)))
    f = student(params)
    x_T = process.prior_sample(jax.random.key(7), (2000, 2))
    logp = lambda x: float(jnp.mean(mix.logp(process, x, process.t_min)))
    two = C.multistep_sample(f, process, x_T, C.sample_times(process, 2), jax.random.key(8))
    prior_like = mix.logp(process, x_T, process.t_min).mean()
    print(f"CT 2 steps mean log p {logp(two):.3f}; noise {float(prior_like):.3f}")
    # samples near the ring: the distance to the nearest mode at most half the noise's
    near = lambda x: float(jnp.median(jnp.min(jnp.linalg.norm(
        x[:, None] - jnp.asarray(mix.means)[None], axis=-1), axis=1)))
    one = C.multistep_sample(f, process, x_T, C.sample_times(process, 1), jax.random.key(8))
    print(f"CT median distance to the nearest mode: 1 step {near(one):.3f}, 2 steps "
          f"{near(two):.3f}, the noise itself {near(x_T):.3f} (modes 0.05 wide)")
    assert near(one) < 0.5 * near(x_T) and near(two) < 0.5 * near(x_T)


def test_ct_curriculum_doubles_from_s0_to_s1():
    ks = [C.ct_num_scales(k, 600, 10, 80) for k in (0, 149, 150, 300, 450, 599)]
    assert [int(v) for v in ks] == [11, 11, 21, 41, 81, 81]


# --- the method on the engine and the CLI -------------------------------------------------------

def _consistency_config(configs, teacher=None, steps=4, **kw):
    cfg = configs.toy(steps)
    for section in ("loss",) + (("process", "parameterization") if teacher else ()):
        del cfg[section]
    cfg.method = "consistency"
    cfg.consistency = ({"mode": "cd", "teacher": str(teacher), "num_scales": 6, **kw} if teacher
                       else {"mode": "ct", "s0": 4, "s1": 16, **kw})
    return cfg


@pytest.fixture(scope="module")
def toy_teacher(configs, tmp_path_factory):
    from diffusion_jax.experiment import from_config
    from diffusion_jax.train.loop import train

    wd = tmp_path_factory.mktemp("teacher") / "run"
    train(from_config(configs.toy(4)), str(wd))
    return wd


def test_distillation_on_the_engine_keeps_the_teacher_frozen_and_samples_from_the_cli(
        configs, toy_teacher, tmp_path, capsys):
    from diffusion_jax.cli import main
    from diffusion_jax.experiment import from_config
    from diffusion_jax.train.loop import train
    from diffusion_jax.workdir import load

    out = train(from_config(_consistency_config(configs, toy_teacher)), str(tmp_path / "cd"))
    assert out["status"] == "done"
    state = out["state"]
    _, teacher, _ = load(toy_teacher)
    for a, b in zip(jax.tree_util.tree_leaves(state.teacher), jax.tree_util.tree_leaves(teacher)):
        np.testing.assert_array_equal(a, b)  # frozen: the teacher's EMA, bit for bit
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(teacher))]
    assert max(moved) > 0  # the student started as the teacher and learned
    for steps in ("1", "2"):
        path = tmp_path / f"s{steps}.npz"
        assert main(["sample", "--workdir", str(tmp_path / "cd"), "--num", "8", "--steps", steps,
                     "--out", str(path)]) == 0
        with np.load(path) as f:
            assert f["images"].shape == (8, 2) and np.all(np.isfinite(f["images"]))
    capsys.readouterr()
    assert main(["sample", "--workdir", str(tmp_path / "cd"), "--num", "4", "--steps", "9",
                 "--out", str(tmp_path / "s9.npz")]) == 0
    assert "more than the 6 scales" in capsys.readouterr().out


def test_consistency_training_runs_on_the_engine(configs, tmp_path):
    from diffusion_jax.experiment import from_config
    from diffusion_jax.train.loop import train

    out = train(from_config(_consistency_config(configs)), str(tmp_path / "ct"))
    assert out["status"] == "done" and out["state"].teacher == {}


def test_a_teacher_of_other_data_or_process_is_refused_before_compiling(configs, toy_teacher,
                                                                         tmp_path):
    from diffusion_jax.experiment import ConfigError, from_config

    cfg = _consistency_config(configs, toy_teacher)
    cfg.data.dim = 3
    with pytest.raises(ConfigError, match=r"trained on data of shape \(2,\); this experiment's "
                                          r"data has shape \(3,\)"):
        from_config(cfg)
    cfg = _consistency_config(configs, toy_teacher)
    cfg.process = {"name": "vp_cosine"}
    with pytest.raises(ConfigError, match="differs from the teacher's"):
        from_config(cfg)
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        from_config(_consistency_config(configs, tmp_path / "nothing"))


def test_class_conditional_distillation_on_the_engine_takes_labels_from_the_cli(
        configs, toy_teacher, tmp_path, capsys):
    """A class-conditional toy teacher (the ring's 8 modes as labels) distilled with guidance:
    the student starts as the teacher (its label embedding included), the CLI's ``--labels``
    reach the network (two labels, same seed: different samples), and the settings a
    conditional distillation refuses are one line each, before compiling."""
    from diffusion_jax.cli import main
    from diffusion_jax.experiment import from_config
    from diffusion_jax.settings import ConfigError
    from diffusion_jax.train.loop import train
    from diffusion_jax.workdir import load

    cfg = configs.toy(4)
    cfg.model.conditional = True
    no_drop = tmp_path / "teacher_no_drop"
    train(from_config(cfg), str(no_drop))
    with pytest.raises(ConfigError, match="trained without label dropout"):
        from_config(_consistency_config(configs, no_drop, guidance=2.0))
    cfg.model.cond_drop = 0.2
    teacher = tmp_path / "teacher"
    train(from_config(cfg), str(teacher))
    _, tp, _ = load(str(teacher))
    assert "label_embed" in tp
    out = train(from_config(_consistency_config(configs, teacher, guidance=2.0)),
                str(tmp_path / "cd"))
    assert out["status"] == "done"
    np.testing.assert_array_equal(out["state"].teacher["label_embed"]["embedding"],
                                  tp["label_embed"]["embedding"])
    got = {}
    for labels in ("0", "4"):
        path = tmp_path / f"y{labels}.npz"
        assert main(["sample", "--workdir", str(tmp_path / "cd"), "--num", "8", "--labels",
                     labels, "--seed", "3", "--out", str(path)]) == 0
        with np.load(path) as f:
            got[labels] = f["images"]
    assert got["0"].shape == (8, 2) and np.abs(got["0"] - got["4"]).max() > 1e-4
    # consistency tuning from the conditional teacher and training from scratch take labels too
    ect = train(from_config(_consistency_config(configs, teacher, mode="ect")),
                str(tmp_path / "ect"))
    ct_cfg = _consistency_config(configs)
    ct_cfg.model.conditional = True
    ct = train(from_config(ct_cfg), str(tmp_path / "ct"))
    for run in (ect, ct):
        assert run["status"] == "done" and "label_embed" in run["state"].params
    with pytest.raises(ConfigError, match="consistency.guidance=2.0 needs a class-conditional"):
        from_config(_consistency_config(configs, toy_teacher, guidance=2.0))
    with pytest.raises(ConfigError, match="consistency.guidance=2.0 distils a teacher's guided"):
        from_config(_consistency_config(configs, None, guidance=2.0))
    capsys.readouterr()
