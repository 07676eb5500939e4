"""Samplers against ground truth: the exact denoiser of a Gaussian mixture."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax import processes as P
from diffusion_jax.samplers import driver

# Asymptotic orders of the endpoint error (log2 of the error ratio from 100 to 200 steps), from
# the methods' theory. The multistep methods start with lower-order steps; that costs no order
# here (the first steps, at t_max, are where x0_hat barely moves): DPM-Solver++3M reaches 3 once
# its second-derivative term has its exact weight (it was 2 with k-diffusion's weight, see
# dpm_solver.py). PLMS/iPNDM's fixed Adams-Bashforth weights assume steps uniform in
# rho = sigma/alpha: order 2 on this logsnr grid, 4 on a rho-uniform one (tested below with an
# exact warm start); DEIS/iPNDM-v's weights follow the grid. UniC lifts UniPC-p to order p+1.
ORDERS = {
    "ddim": 1, "euler": 1, "ode_euler": 1, "dpm_solver_1": 1,
    "heun": 2, "ode_heun": 2, "dpm_solver_2": 2, "dpmpp_2s": 2, "dpmpp_2m": 2,
    "plms": 2, "ipndm": 2,
    "dpm_solver_3": 3, "dpmpp_3m": 3, "deis": 3, "unipc_2": 3,
    "deis_tab1": 1, "deis_tab2": 2, "deis_tab3": 3,
    "unipc": 4, "unipc_bh1": 4, "ipndm_v": 4,
    "learned_pc": 3,  # zero coefficients: 2M predictor + quadratic corrector (UniPC-2's order)
    "ode_rk4": 4,
}


STEPS = {"unipc": (200, 400), "unipc_bh1": (200, 400)}


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        g = dj.gmm.random_mixture(4, 5, 0.3, seed=1)
        proc = P.VP.linear()
        den = g.denoiser(proc)
        x_T = proc.prior_sample(jax.random.key(0), (64, 4), jnp.float64)
        ref = dj.sample(den, proc, x_T, sampler="ode_dopri5",
                        sampler_kwargs=dict(rtol=1e-11, atol=1e-11))
    return g, proc, den, x_T, ref


def test_every_deterministic_sampler_is_covered():
    det = {n for n, c in dj.SAMPLERS.items() if not c().stochastic} - {"ode_dopri5"}
    assert det == set(ORDERS)


SLOW_ORDERS = {"deis_tab1", "deis_tab2"}  # tAB-3 stays in the default run (and its warm start)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ORDERS
                                  else n for n in sorted(ORDERS)])
def test_convergence_order(problem, name):
    _, proc, den, x_T, ref = problem
    with jax.enable_x64(True):
        errs = [float(jnp.sqrt(jnp.mean((dj.sample(den, proc, x_T, sampler=name, num_steps=n,
                                                   grid="logsnr") - ref) ** 2)))
                for n in STEPS.get(name, (100, 200))]
    slope = np.log2(errs[0] / errs[1])
    assert abs(slope - ORDERS[name]) <= 0.3, (name, errs, slope)
    assert errs[1] < 2e-2


@pytest.mark.parametrize("proc", [P.EDM(), P.VE(), P.Flow(), P.DiscreteVP()], ids=str)
def test_second_order_on_other_processes(proc):
    with jax.enable_x64(True):
        g = dj.gmm.random_mixture(3, 4, 0.3, seed=2)
        den = g.denoiser(proc)
        x_T = proc.prior_sample(jax.random.key(1), (32, 3), jnp.float64)
        # DiscreteVP's log alpha has kinks at its 1000 knots, which stall step control in t;
        # the ODE is smooth in lambda, where DPM-Solver-3 integrates it.
        ref = (dj.sample(den, proc, x_T, sampler="dpm_solver_3", num_steps=1000)
               if isinstance(proc, P.DiscreteVP) else
               dj.sample(den, proc, x_T, sampler="ode_dopri5",
                         sampler_kwargs=dict(rtol=1e-11, atol=1e-11)))
        for name in ("heun", "dpmpp_2m"):
            e = [float(jnp.max(jnp.abs(dj.sample(den, proc, x_T, sampler=name, num_steps=n,
                                                 grid="logsnr") - ref)))
                 for n in (100, 200)]
            assert abs(np.log2(e[0] / e[1]) - 2) <= 0.3, (name, e)


def test_adaptive_solver_meets_tolerance(problem):
    _, proc, den, x_T, ref = problem
    with jax.enable_x64(True):
        for tol in (1e-4, 1e-6):
            x = dj.sample(den, proc, x_T, sampler="ode_dopri5",
                          sampler_kwargs=dict(rtol=tol, atol=tol))
            err = float(jnp.sqrt(jnp.mean((x - ref) ** 2)))
            assert err < 20 * tol, (tol, err)


STOCHASTIC = {"ddpm": 200, "ddim_eta1": 200, "dpmpp_sde_2m": 200, "euler_maruyama": 1000,
              "reverse_diffusion": 500, "pc": 500, "ald": 200, "heun_churn": 100, "restart": 60}


@pytest.fixture(scope="module")
def mixture_1d():
    # Three separated modes with unequal weights and widths.
    means = np.array([[-3.0], [0.5], [4.0]])  # >= 4.4 sd between every pair of modes
    stds = np.array([[0.3], [0.2], [0.4]])
    return dj.gmm.GaussianMixture(means, stds**2, np.array([0.5, 0.2, 0.3]))


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_sampler_reproduces_the_mixture(mixture_1d, name):
    g, n = mixture_1d, 8000
    proc = P.VP.linear()
    sampler = {"ddim_eta1": dj.samplers.DDIM(eta=1.0),
               "heun_churn": dj.samplers.Heun(s_churn=40.0),
               "ald": dj.samplers.AnnealedLangevin(n_steps_each=10)}.get(name, name)
    x_T = proc.prior_sample(jax.random.key(0), (n, 1))
    x = dj.sample(g.denoiser(proc), proc, x_T, sampler=sampler, num_steps=STOCHASTIC[name],
                  key=jax.random.key(1), grid="uniform" if name in ("euler_maruyama", "pc",
                                                                    "reverse_diffusion") else "logsnr")
    lab = np.argmin(np.abs(np.asarray(x) - g.means[:, 0]), axis=1)
    for k in range(3):
        w = g.weights[k]
        frac = np.mean(lab == k)
        assert abs(frac - w) < 4 * np.sqrt(w * (1 - w) / n) + 0.01, (name, k, frac, w)
        xs = np.asarray(x)[lab == k, 0]
        sd = np.sqrt(g.variances[k, 0])
        assert abs(xs.mean() - g.means[k, 0]) < 4 * sd / np.sqrt(len(xs)) + 0.02, (name, k)
        # Langevin at fine levels mixes slowly (its step is 0.2 sigma^2): ALD keeps some excess
        # spread, a known property of the algorithm (Song & Ermon 2020, Sec. 3).
        assert abs(xs.std() / sd - 1) < (0.15 if name == "ald" else 0.08), (name, k, xs.std(), sd)


def test_jit_whole_run_and_no_recompile(problem):
    g, proc, den, x_T, _ = problem
    x32 = x_T.astype(jnp.float32)
    den32 = g.denoiser(proc)
    before = driver._run_jit._cache_size()
    dj.sample(den32, proc, x32, sampler="dpmpp_2m", num_steps=7, key=jax.random.key(0))
    dj.sample(den32, proc, x32 + 1, sampler="dpmpp_2m", num_steps=7, key=jax.random.key(5))
    assert driver._run_jit._cache_size() == before + 1
    f = jax.jit(functools.partial(dj.sample, den32, proc, sampler="ddpm", num_steps=5))
    a, b = f(x32, key=jax.random.key(1)), f(x32, key=jax.random.key(2))
    assert f._cache_size() == 1 and not np.allclose(a, b)


def test_total_nfe_counts_honestly():
    assert dj.total_nfe("heun", 10) == 21
    assert dj.total_nfe("dpmpp_2m", 9) == 10
    assert dj.total_nfe("dpm_solver_3", 3, final_denoise=False) == 9
    assert dj.total_nfe("pc", 10) == 21


def test_bad_input(problem):
    _, proc, den, x_T, _ = problem
    x = x_T.astype(jnp.float32)
    with pytest.raises(ValueError, match="valid samplers: ddim"):
        dj.sample(den, proc, x, sampler="dpm++")
    with pytest.raises(ValueError, match="num_steps"):
        dj.sample(den, proc, x, num_steps=0)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        dj.sample(den, proc, x, sampler=dj.samplers.DDIM(eta=-1.0))
    with pytest.raises(ValueError, match="unknown grid"):
        dj.sample(den, proc, x, grid="cosine")
    with pytest.raises(ValueError, match="outside"):
        dj.sample(den, proc, x, ts=[2.0, 0.5, 0.01])
    with pytest.raises(ValueError, match="shape"):
        dj.sample(lambda x, t: x[:, :2], proc, x)

    def nan_after(x, t):  # a denoiser that breaks below t = 0.5
        return jnp.where(t < 0.5, jnp.nan, 0.0) * x

    with pytest.raises(FloatingPointError, match=r"NaN at step 3 of 4 \(t=0.25"):
        dj.sample(nan_after, proc, x, sampler="ddim", num_steps=4, grid="uniform")


def test_grids():
    for proc in (P.VP.linear(), P.EDM(), P.VE()):
        for kind in ("uniform", "logsnr", "quadratic", "karras"):
            ts = dj.make_grid(proc, 10, kind)
            assert len(ts) == 11 and ts[0] == proc.t_max and ts[-1] == proc.t_min
            assert np.all(np.diff(ts) < 0)
    ts = dj.make_grid(P.EDM(), 17, "karras")  # EDM eq. 5 with rho = 7
    i = np.arange(18)
    want = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(ts, want, rtol=1e-5)
    d = P.DiscreteVP()
    lead = np.round(dj.make_grid(d, 10, "leading") * 1000) - 1
    trail = np.round(dj.make_grid(d, 10, "trailing") * 1000) - 1
    assert lead[-1] == 0 and trail[0] == 999 and trail[-1] == 0 and len(set(lead)) == 11
    with pytest.raises(ValueError, match="DiscreteVP"):
        dj.make_grid(P.VP.linear(), 10, "trailing")


def test_the_ode_final_step_matches_its_closed_form_on_a_gaussian():
    """From the exact x(t_min) of N(mu, v): the jump x0_hat is off by u/(2v) of x(0) - mu, the
    ODE step in u = (sigma/alpha)^2 by u^2/(8v^2) (both to leading order), u = u(t_min)."""
    with jax.enable_x64(True):
        mu, std = 0.3, 0.05
        g = dj.gmm.gaussian(3, mu, std)
        proc = P.VP.linear()
        v, t = std ** 2, proc.t_min
        a, s = proc.alpha(t), proc.sigma(t)
        u = float((s / a) ** 2)
        x_end = mu + jax.random.normal(jax.random.key(0), (4096, 3), jnp.float64) * std  # x(0)
        x_t = a * (mu + (x_end - mu) * jnp.sqrt(v + u) / std)  # the exact PF-ODE path at t_min
        x0 = g.denoiser(proc)(x_t, t)
        rel = lambda y: float(jnp.sqrt(jnp.mean((y - x_end) ** 2)) / jnp.sqrt(jnp.mean((x_end - mu) ** 2)))
        jump, ode = (rel(driver.final_step(x_t, x0, proc, t, k)) for k in ("denoise", "ode"))
    np.testing.assert_allclose(jump, u / (2 * v), rtol=0.05)
    np.testing.assert_allclose(ode, u ** 2 / (8 * v ** 2), rtol=0.05)


def test_no_accuracy_floor_at_high_nfe():
    """Against the exact endpoint at sigma = 0 (dopri5 down to t = 1e-9): the first-order jump
    from t_min holds every sampler near 1e-3; the ODE final step does not."""
    g, proc = dj.gmm.ring(8, 2.0, 0.05), P.VP.linear()
    x_T = proc.prior_sample(jax.random.key(0), (256, 2))
    with jax.enable_x64(True):
        end = P.VP.linear(t_min=1e-9)
        ref = np.asarray(dj.sample(g.denoiser(end), end, x_T.astype(jnp.float64),
                                   sampler="ode_dopri5", ts=[1.0, 1e-9], final="denoise",
                                   sampler_kwargs=dict(rtol=1e-10, atol=1e-10)))
    err = {f: float(np.sqrt(np.mean((np.asarray(dj.sample(
        g.denoiser(proc), proc, x_T, sampler="unipc", num_steps=99, final=f)) - ref) ** 2)))
        for f in ("denoise", "ode")}
    assert err["ode"] < err["denoise"] / 4, err


@pytest.mark.slow  # a 5-30 step sweep on four grids (34 s): -m slow
def test_no_error_jump_across_step_counts():
    """Adding a step never makes a multistep solver's endpoint worse by more than 30%, on any
    of four grids from 5 to 30 steps (the old n < 15 rule: up to 30x from 14 to 15 steps)."""
    g, proc = dj.gmm.ring(8, 2.0, 0.05), P.VP.linear()
    x_T = proc.prior_sample(jax.random.key(0), (128, 2))
    den = g.denoiser(proc)
    ref = dj.sample(den, proc, x_T, sampler="ode_dopri5", sampler_kwargs=dict(rtol=1e-7, atol=1e-7))
    bad = []
    for name in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        sampler = dj.samplers.resolve_sampler(name)
        run = jax.jit(lambda ts, s=sampler: driver.run(s, den, proc, x_T, ts, jax.random.key(0))[0])
        for grid in ("uniform", "quadratic", "karras", "logsnr"):
            errs = [float(jnp.sqrt(jnp.mean((run(jnp.asarray(dj.make_grid(proc, n, grid),
                                                              jnp.float32)) - ref) ** 2)))
                    for n in range(5, 31)]
            bad += [(name, grid, n + 6, round(b / a, 2)) for n, (a, b) in
                    enumerate(zip(errs, errs[1:])) if b > 1.3 * a]
    assert not bad, bad


def _warm_started_order(problem, sampler, carry_fn, warm, grid_fn, ns=(40, 80)):
    """Order of ``sampler`` from t=0.3 to 0.05 with its history started from exact values (the
    PF-ODE solved to 1e-13), so that no warm-up step limits it."""
    g, proc, den, x_T, _ = problem
    with jax.enable_x64(True):
        tol = dict(rtol=1e-13, atol=1e-13)
        x_a = dj.sample(den, proc, x_T, sampler="ode_dopri5", ts=[1.0, 0.3], final_denoise=False,
                        sampler_kwargs=tol)
        exact = lambda t: x_a if t >= 0.3 else dj.sample(
            den, proc, x_a, sampler="ode_dopri5", ts=[0.3, t], final_denoise=False,
            sampler_kwargs=tol)
        ref, errs = exact(0.05), []
        for n in ns:
            ts = grid_fn(proc, n + warm)
            xs = [exact(float(t)) for t in ts[:warm + 1]]
            ctx = dj.samplers.Context(den, proc, n + warm)
            step = jax.jit(lambda c, i, t, tn: sampler.step(ctx, c, i, t, tn, None))
            carry = carry_fn(proc, den, xs, ts)
            for i in range(warm, n + warm):
                carry = step(carry, i, ts[i], ts[i + 1])
            errs.append(float(jnp.sqrt(jnp.mean((carry.x - ref) ** 2))))
    return float(np.log2(errs[0] / errs[1]))


def _logsnr_grid(proc, n):
    return dj.make_grid(proc, n, "logsnr", t_max=0.3, t_min=0.05)


def _rho_grid(proc, n):
    rho = lambda t: float(proc.sigma(t) / proc.alpha(t))
    r = np.linspace(rho(0.3), rho(0.05), n + 1)
    ts = np.array([float(proc.t_of_logsnr(-2.0 * np.log(v))) for v in r])
    ts[0], ts[-1] = 0.3, 0.05
    return ts


def _eps(proc, den, x, t):
    return (x - proc.alpha(t) * den(x, t)) / proc.sigma(t)


def _dpm_history(proc, den, xs, ts):
    lam = lambda t: 0.5 * proc.logsnr(t)
    ring = dj.samplers.base.ring_of  # the history as the sampler's ring holds it at step 2
    return dj.samplers.Carry(xs[2], ring(jnp.stack([den(xs[1], ts[1]), den(xs[0], ts[0])]), 2),
                             jnp.stack([lam(ts[1]), lam(ts[0])]))


def _eps_history(k):
    def fn(proc, den, xs, ts):
        past = jnp.stack([_eps(proc, den, xs[k - j], ts[k - j]) for j in range(1, k + 1)])
        return dj.samplers.Carry(xs[k], dj.samplers.base.ring_of(past, k))  # as at step k
    return fn


def _t_history(k):
    def fn(proc, den, xs, ts):
        h = _eps_history(k)(proc, den, xs, ts)
        return h._replace(past=jnp.stack([jnp.asarray(ts[k - j]) for j in range(1, k + 1)]))
    return fn


def _rho_history(k):
    def fn(proc, den, xs, ts):
        h = _eps_history(k)(proc, den, xs, ts)
        return h._replace(past=jnp.stack([proc.sigma(ts[k - j]) / proc.alpha(ts[k - j])
                                          for j in range(1, k + 1)]))
    return fn


@pytest.mark.parametrize("name, sampler, carry_fn, warm, grid_fn, order", [
    ("dpmpp_3m", dj.samplers.DPMSolverPP(order=3, lower_order_final=False), _dpm_history, 2,
     _logsnr_grid, 3),
    ("plms on a rho-uniform grid", dj.samplers.PLMS(), _eps_history(3), 3, _rho_grid, 4),
    ("deis", dj.samplers.DEIS(order=3), _rho_history(2), 2, _logsnr_grid, 3),
    ("ipndm_v", dj.samplers.DEIS(order=4), _rho_history(3), 3, _logsnr_grid, 4),
    ("deis_tab3", dj.samplers.DEIS(order=3, variable="t"), _t_history(2), 2, _logsnr_grid, 3),
], ids=["dpmpp_3m", "plms_rho_grid", "deis", "ipndm_v", "deis_tab3"])
def test_multistep_true_orders(problem, name, sampler, carry_fn, warm, grid_fn, order):
    slope = _warm_started_order(problem, sampler, carry_fn, warm, grid_fn)
    assert abs(slope - order) <= 0.4, (name, slope)


def test_a_learned_grid_beats_its_initial_grid_on_held_out_noise():
    """Calibrated on one batch of noise, evaluated on another, against the exact PF-ODE."""
    g, proc = dj.gmm.ring(8, 2.0, 0.05), P.VP.linear()
    den = g.denoiser(proc)
    x_cal = proc.prior_sample(jax.random.key(1), (64, 2))
    x_new = proc.prior_sample(jax.random.key(2), (256, 2))
    ref = dj.samplers.learned_grid.reference_endpoints(den, proc, x_new)
    ts, info = dj.optimize_grid(den, proc, "dpmpp_2m", 9, x_cal, iters=100)
    assert len(ts) == 10 and np.all(np.diff(ts) < 0)
    assert ts[0] == proc.t_max and ts[-1] >= proc.t_min  # the end may move up (learn_end)
    assert info["calib_rmse"] < info["calib_rmse_init"]
    err = lambda **kw: float(jnp.sqrt(jnp.mean((dj.sample(den, proc, x_new, sampler="dpmpp_2m",
                                                          **kw) - ref) ** 2)))
    assert err(ts=ts) < 0.5 * err(num_steps=9, grid="logsnr")
    with pytest.raises(ValueError, match="at least 16 calibration samples, got 8"):
        dj.optimize_grid(den, proc, "dpmpp_2m", 9, x_cal[:8])
    with pytest.raises(ValueError, match="deterministic sampler, got 'ddpm'"):
        dj.optimize_grid(den, proc, "ddpm", 9, x_cal)


def test_a_learned_solver_beats_every_fixed_sampler_on_held_out_noise():
    """optimize_solver at NFE 5 on the ring, calibrated on one batch of noise and judged on
    another against the exact PF-ODE endpoints: at most half the error of the best fixed sampler
    (the issue's goal for the default samplers), and the stored form gives the same samples."""
    g, proc = dj.gmm.ring(8, 2.0, 0.05), P.VP.linear()
    den = g.denoiser(proc)
    x_cal = proc.prior_sample(jax.random.key(1), (128, 2))
    x_new = proc.prior_sample(jax.random.key(2), (256, 2))
    ref = dj.samplers.learned_grid.reference_endpoints(den, proc, x_new)
    ts, solver, info = dj.optimize_solver(den, proc, 4, x_cal, iters=300)
    assert len(ts) == 5 and np.all(np.diff(ts) < 0) and ts[0] == proc.t_max
    assert dj.total_nfe(solver, 4) == 5 and info["val_num"] == 32
    err = lambda s, **kw: float(jnp.sqrt(jnp.mean((dj.sample(den, proc, x_new, sampler=s, **kw)
                                                   - ref) ** 2)))
    fixed = min(err(s, num_steps=4) for s in ("unipc", "unipc_2", "dpmpp_3m", "ipndm_v", "deis"))
    learned = err(solver, ts=ts)
    assert learned < 0.5 * fixed, (learned, fixed)
    again = dj.samplers.LearnedPC.from_json(json.loads(json.dumps(solver.to_json())))
    assert again == solver and hash(again) == hash(solver)
    # the selection's held-out error (fitted with the corrector as a traced gate) is the stored
    # solver's own, with the corrector a plain bool
    x_val = x_cal[-info["val_num"]:]
    val_ref = dj.samplers.learned_grid.reference_endpoints(den, proc, x_val)
    val = float(jnp.sqrt(jnp.mean((dj.sample(den, proc, x_val, sampler=solver, ts=ts) - val_ref)
                                  ** 2)))
    np.testing.assert_allclose(val, info["val_rmse"], rtol=0.05)
    with jax.enable_x64(True):  # a float64 grid back on the host (was a read-only view)
        ts64, _, _ = dj.optimize_solver(den, proc, 4, x_cal.astype(jnp.float64), iters=2,
                                        correctors=(False,))
    assert ts64.dtype == np.float64 and np.all(np.diff(ts64) < 0)
    with pytest.raises(ValueError, match=r"LearnedPC.pred has shape \(4, 3\), this grid of 6 steps"):
        dj.sample(den, proc, x_new, sampler=solver, num_steps=6)
    with pytest.raises(ValueError, match="at least 16 calibration samples, got 8"):
        dj.optimize_solver(den, proc, 4, x_cal[:8])
    with pytest.raises(ValueError, match="history must be 1..3, got 5"):
        dj.optimize_solver(den, proc, 4, x_cal, history=5)


def test_a_named_sampler_gets_its_default_grid(problem, monkeypatch):
    _, proc, den, x_T, _ = problem
    x = x_T.astype(jnp.float32)
    den32 = dj.gmm.random_mixture(4, 5, 0.3, seed=1).denoiser(proc)
    monkeypatch.setitem(dj.samplers.DEFAULT_GRIDS, "heun", "uniform")
    for name in ("unipc", "plms", "heun"):
        want = dj.sample(den32, proc, x, sampler=name, num_steps=4, grid=dj.samplers.default_grid(name))
        np.testing.assert_array_equal(dj.sample(den32, proc, x, sampler=name, num_steps=4), want)
    obj = dj.samplers.UniPC(order=3)  # an object: no name to look up, logsnr
    np.testing.assert_array_equal(dj.sample(den32, proc, x, sampler=obj, num_steps=4),
                                  dj.sample(den32, proc, x, sampler=obj, num_steps=4, grid="logsnr"))


def test_restart_counts_its_cycles_and_refuses_bad_settings(problem):
    _, proc, den, x_T, _ = problem
    r = dj.samplers.Restart()  # 2 cycles of 3 Heun steps
    ts = dj.make_grid(proc, 10, "logsnr")
    full = r.expand_grid(proc, ts)
    assert len(full) - 1 == 10 + 2 * (3 + 1)  # each cycle: one noise injection + 3 ODE steps
    assert int(np.sum(np.diff(full) > 0)) == 2  # the two injections go up in t
    assert dj.total_nfe("restart", 10) == 2 * (10 + 6) + 1
    assert dj.samplers.steps_for_budget("restart", 20) == 3 and dj.total_nfe("restart", 3) == 19
    for kw in (dict(rho_min=0.5, rho_max=0.3), dict(restart_steps=0)):
        with pytest.raises(ValueError, match="Restart needs"):
            dj.sample(den, proc, x_T, sampler=dj.samplers.Restart(**kw), num_steps=10)
    with pytest.raises(ValueError, match="no interior grid point below rho_max"):
        dj.sample(den, proc, x_T, sampler=dj.samplers.Restart(rho_max=1e-6, rho_min=1e-7),
                  num_steps=10)


def test_noise_prediction_singlestep_solvers_warn_at_low_nfe(problem):
    g, proc, _, x_T, _ = problem
    x, den = x_T.astype(jnp.float32), g.denoiser(proc)
    with pytest.warns(UserWarning, match="unstable below 11 NFE.*dpmpp_2s"):
        dj.sample(den, proc, x, sampler="dpm_solver_2", num_steps=2)
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dj.sample(den, proc, x, sampler="dpmpp_2s", num_steps=2)
        dj.sample(den, proc, x, sampler="dpm_solver_2", num_steps=6)  # 13 NFE: no warning
    assert not [w for w in caught if "unstable below" in str(w.message)]


def test_the_callback_sees_every_network_evaluation_and_costs_nothing_when_absent(problem):
    """``callback(i, t, x, x0_hat)``: once per network call (Heun: 2 a step), the final call with
    ``i = N``, and x0_hat is the denoiser's output on x; the samples equal those without it."""
    g, proc, den, x_T, _ = problem
    seen = []
    cb = lambda i, t, x, x0: seen.append((int(i), float(t), np.asarray(x), np.asarray(x0)))
    with jax.enable_x64(True):
        with_cb = dj.sample(den, proc, x_T, sampler="heun", num_steps=3, callback=cb)
        plain = dj.sample(den, proc, x_T, sampler="heun", num_steps=3)
        np.testing.assert_array_equal(np.asarray(with_cb), np.asarray(plain))
        assert len(seen) == dj.total_nfe("heun", 3)
        assert sorted({i for i, *_ in seen}) == [0, 1, 2, 3] and seen[-1][0] == 3
        for i, t, x, x0 in seen:
            np.testing.assert_allclose(x0, np.asarray(den(jnp.asarray(x), jnp.asarray(t))),
                                       rtol=1e-5, atol=1e-6)  # float32 rounding


def test_samplers_declare_what_the_driver_asks():
    """Adaptive solving, grid expansion and low-NFE warnings are declared members."""
    from diffusion_jax.samplers import SAMPLERS
    for name, ctor in SAMPLERS.items():
        s = ctor()
        assert isinstance(s.adaptive, bool) and isinstance(s.expands_grid, bool), name
        assert all(hasattr(s, f) for f in s.nonnegative), name
    assert SAMPLERS["ode_dopri5"]().adaptive and SAMPLERS["restart"]().expands_grid
    assert SAMPLERS["dpm_solver_3"]().low_nfe_warning(5) is not None
    assert SAMPLERS["dpm_solver_3"]().low_nfe_warning(20) is None
    with pytest.raises(ValueError, match="DDIM.eta must be >= 0"):
        dj.samplers.DDIM(eta=-1.0).validate()


def test_inversion_round_trip_error_falls_with_the_sampler_order():
    """Invert exact-mixture samples to noise and regenerate them with the same sampler and grid:
    the round trip is two discretisations of one ODE, so its error falls with the steps at the
    sampler's order: DDIM (first order) halves it when the steps double; Heun (second order)
    falls faster; a stochastic sampler is refused."""
    with jax.enable_x64(True):
        g, proc = dj.gmm.random_mixture(4, 5, 0.3, seed=1), P.VP.linear()
        den = g.denoiser(proc)
        x0 = g.sample(jax.random.key(1), 64, jnp.float64)[0]

        def err(sampler, n):
            x_T = dj.invert(den, proc, x0, sampler=sampler, num_steps=n, grid="logsnr")
            assert not np.allclose(x_T, x0)
            x = dj.sample(den, proc, x_T, sampler=sampler, num_steps=n, grid="logsnr")
            return float(jnp.sqrt(jnp.mean((x - x0) ** 2)))

        ddim = [err("ddim", n) for n in (20, 40, 80)]
        heun = [err("heun", n) for n in (5, 10, 20)]
    assert 0.4 < ddim[1] / ddim[0] < 0.6 and 0.4 < ddim[2] / ddim[1] < 0.6
    assert heun[1] / heun[0] < 0.3 and heun[2] / heun[1] < 0.3
    assert heun[2] < ddim[0]
    with pytest.raises(ValueError, match="deterministic sampler"):
        dj.invert(den, proc, x0, sampler="ddpm", num_steps=5)
