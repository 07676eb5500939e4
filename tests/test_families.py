"""GANs, VAEs and normalizing flows on the engine, against ground truth: the flow's inverse and its
log-determinant (``jax.jacfwd``), actnorm's data-dependent init, the Gaussian KL by numerical
integration, the discretized logistic summing to one over the 256 values, the WGAN-GP penalty of a
linear critic, spectral normalisation against the SVD, a GAN step on 1 and 8 devices, a GAN run
killed with SIGKILL resuming bit for bit, and the CLI on each family's workdir."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.cli import main
from diffusion_jax.experiment import ConfigError, from_config
from diffusion_jax.methods.gan import GAN, gradient_penalty
from diffusion_jax.methods.vae import discretized_logistic_logp, gaussian_kl
from diffusion_jax.models.flow import ActNorm, Glow, latent_shapes
from diffusion_jax.models.gan import SPECTRAL, Discriminator, Generator, SNLayer, power_iteration
from diffusion_jax.train.loop import train
from diffusion_jax.train.logger import read_history

HERE = Path(__file__).resolve().parent


# --- the flow ---------------------------------------------------------------------------------

def _perturbed_glow(shape=(4, 4, 1), levels=2, steps=2, hidden=8, batch=16):
    """A Glow initialised on data, then every parameter moved at random (zero-initialised
    couplings would otherwise be the identity)."""
    model = Glow(levels=levels, steps=steps, hidden=hidden)
    x = jax.random.normal(jax.random.key(0), (batch,) + shape) * 0.5 + 0.1
    params = model.init(jax.random.key(1), x)["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    leaves = [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    return model, jax.tree_util.tree_unflatten(tree, leaves), x


def test_the_flow_inverts_and_its_logdet_is_the_jacobians():
    model, params, x = _perturbed_glow()
    zs, logdet = model.apply({"params": params}, x)
    assert [z.shape[1:] for z in zs] == latent_shapes((4, 4, 1), 2)
    back = model.apply({"params": params}, zs, method=Glow.reverse)
    np.testing.assert_allclose(back, x, atol=1e-5)

    def flat(img):  # one image -> all its latents as one vector
        zz, _ = model.apply({"params": params}, img[None])
        return jnp.concatenate([z.reshape(-1) for z in zz])

    for i in range(3):
        jac = jax.jacfwd(flat)(x[i])
        _, ref = np.linalg.slogdet(np.asarray(jac, np.float64).reshape(16, 16))
        np.testing.assert_allclose(logdet[i], ref, atol=1e-4)
    assert float(jnp.std(logdet)) > 1e-3  # the couplings make it depend on the input


def test_actnorm_data_dependent_init_gives_zero_mean_unit_variance():
    x = jax.random.normal(jax.random.key(0), (64, 5, 5, 3)) * jnp.array([0.1, 2.0, 7.0]) + 3.0
    layer = ActNorm()
    params = layer.init(jax.random.key(1), x)
    y, _ = layer.apply(params, x)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-4)  # float32 of x - 3
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_flow_sizes_not_divisible_by_the_squeezes_are_named(configs, tmp_path):
    cfg = configs.family("flow", tmp_path, extra=["model.levels=4"])
    with pytest.raises(ConfigError, match=r"data.image_size=8 must be divisible by 2\*\*levels=16"):
        from_config(cfg)


# --- the VAE ----------------------------------------------------------------------------------

def test_gaussian_kl_equals_numerical_integration():
    mu = np.array([[0.0, 1.5, -0.7]])
    logvar = np.array([[0.0, -1.2, 0.8]])
    grid = np.linspace(-12, 12, 200001)
    ref = 0.0
    for m, lv in zip(mu[0], logvar[0]):
        s = math.exp(0.5 * lv)
        q = np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
        logq = -0.5 * ((grid - m) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))
        logp = -0.5 * grid ** 2 - 0.5 * math.log(2 * math.pi)
        ref += np.trapezoid(q * (logq - logp), grid)
    np.testing.assert_allclose(gaussian_kl(jnp.asarray(mu), jnp.asarray(logvar))[0], ref, rtol=1e-5)


@pytest.mark.parametrize("mean,log_scale", [(0.0, -3.0), (0.93, -6.5), (-1.0, 0.5), (0.2, -7.0)])
def test_discretized_logistic_is_a_distribution_over_the_256_values(mean, log_scale):
    values = jnp.arange(256) / 127.5 - 1.0
    lp = discretized_logistic_logp(values, jnp.full(256, mean), jnp.full(256, log_scale))
    np.testing.assert_allclose(jnp.sum(jnp.exp(lp)), 1.0, atol=2e-4)


def test_vae_bounds_are_ordered_and_the_iwae_tightens_with_k(configs, tmp_path):
    exp = from_config(configs.family("vae", tmp_path))
    m = exp.method
    params = m.init(jax.random.key(0)).params
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1)) / 127.5 - 1.0,
                    jnp.float32)
    b1 = m.bits_per_dim(params, x, jax.random.key(1), k=1)
    b32 = m.bits_per_dim(params, x, jax.random.key(1), k=32)
    # log-mean-exp >= mean-log (Jensen), so more importance samples give a lower bits/dim
    assert float(jnp.mean(b32["iwae"])) < float(jnp.mean(b1["iwae"]))
    assert float(jnp.mean(b32["iwae"])) <= float(jnp.mean(b32["elbo"]))


def test_the_spatial_latent_autoencoder_for_latent_diffusion(configs, tmp_path):
    exp = from_config(configs.family("vae", tmp_path, extra=["model.latent_dim=0",
                                                             "vae.beta=0.001"]))
    m = exp.method
    state = m.init(jax.random.key(0))
    x = jnp.zeros((3, 8, 8, 1))
    z = m.encode(state.params, x)
    assert z.shape == (3, 2, 2, 4) and m.decode(state.params, z).shape == x.shape
    batch = {"image": x, "label": jnp.zeros(3, jnp.int32)}
    _, metrics = jax.jit(m.train_step)(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["kl_weight"]) == pytest.approx(5e-4)


# --- the GAN ----------------------------------------------------------------------------------

def test_wgan_gp_penalty_of_a_linear_critic_is_hand_computed():
    w = jnp.array([0.3, -1.2, 2.0, 0.5])
    critic = lambda x: x.reshape(x.shape[0], -1) @ w + 0.7
    real = jax.random.normal(jax.random.key(0), (5, 2, 2))
    fake = jax.random.normal(jax.random.key(1), (5, 2, 2))
    expected = (math.sqrt(0.09 + 1.44 + 4.0 + 0.25) - 1.0) ** 2
    np.testing.assert_allclose(gradient_penalty(critic, real, fake, jax.random.key(2)), expected,
                               rtol=1e-5)


def test_spectral_norm_converges_to_the_top_singular_value():
    m = jax.random.normal(jax.random.key(0), (30, 12))
    top = np.linalg.svd(np.asarray(m), compute_uv=False)[0]
    u = jax.random.normal(jax.random.key(1), (12,))
    for _ in range(100):
        sigma, u = power_iteration(m, u)
    np.testing.assert_allclose(sigma, top, rtol=1e-4)
    # the layer: its stored vector advances one iteration per update_stats call
    layer = SNLayer(6, (3, 3))
    x = jnp.ones((1, 5, 5, 4))
    variables = nn.meta.unbox(layer.init(jax.random.key(2), x))
    for _ in range(60):
        _, upd = layer.apply(variables, x, update_stats=True, mutable=[SPECTRAL])
        variables = {"params": variables["params"], **upd}
    k = np.asarray(variables["params"]["kernel"]).reshape(-1, 6)
    sigma, _ = power_iteration(jnp.asarray(k), variables[SPECTRAL]["u"], n_iter=0)
    np.testing.assert_allclose(sigma, np.linalg.svd(k, compute_uv=False)[0], rtol=1e-4)


def test_a_gan_step_is_pure_and_the_same_on_1_and_8_devices(loss="wgan_gp"):
    gen = Generator(8, 1, ch=4, levels=2, num_classes=3)
    disc = Discriminator(ch=4, levels=2, num_classes=3)
    tx = lambda: optax.adam(1e-3, 0.0, 0.9)
    m = GAN(gen, disc, tx(), tx(), (8, 8, 1), z_dim=8, loss=loss, n_critic=2, r1_gamma=0.5)
    batch = {"image": jax.random.uniform(jax.random.key(0), (16, 8, 8, 1), minval=-1, maxval=1),
             "label": jnp.arange(16) % 3}
    out = {}
    for n in (1, 8):
        mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
        _, sh = m.abstract_state(mesh, (("batch", "data"),))
        state = jax.jit(m.init, out_shardings=sh)(jax.random.key(1))
        b = jax.device_put(batch, NamedSharding(mesh, P("data")))
        step = jax.jit(m.train_step, in_shardings=(sh, None, None), out_shardings=(sh, None))
        s1, m1 = step(state, b, jax.random.key(2))
        s1b, m1b = step(state, b, jax.random.key(2))  # pure: the same inputs, the same outputs
        for a, c in zip(jax.tree_util.tree_leaves(m1), jax.tree_util.tree_leaves(m1b)):
            np.testing.assert_array_equal(a, c)
        out[n] = jax.device_get((s1, m1))
    (s1, m1), (s8, m8) = out[1], out[8]
    assert set(m1) >= {"d_real", "d_fake", "penalty", "g_loss", "d_loss", "loss"}
    assert m1["penalty"] > 0
    for k in m1:
        np.testing.assert_allclose(m1[k], m8[k], rtol=2e-4, atol=1e-6, err_msg=k)
    for a, c in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s8)):
        np.testing.assert_allclose(a, c, rtol=1e-3, atol=1e-5)


def test_a_gan_killed_with_sigkill_resumes_bit_identically(configs, tmp_path):
    n = 8
    ref = tmp_path / "reference"
    train(from_config(configs.family("gan", tmp_path, n)), str(ref))
    wd = tmp_path / "run"
    env = dict(os.environ, FAULT_FAMILY="gan")
    proc = subprocess.run([sys.executable, str(HERE / "fault_worker.py"), str(wd), str(n), "4"],
                          cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert Checkpointer(wd).latest_step() in (2, 4)
    out = train(from_config(configs.family("gan", tmp_path, n)), str(wd))
    assert out["status"] == "done"
    rows = lambda w: {r["step"]: (r["loss"], r["g_loss"], r["d_real"])
                      for r in read_history(w, 10 ** 9) if "loss" in r}
    assert rows(wd) == rows(ref)
    a, b = Checkpointer(wd), Checkpointer(ref)
    import orbax.checkpoint as ocp
    restore = lambda c: c.manager.restore(n, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    sa, sb = restore(a), restore(b)
    assert set(sa) == {"step", "params", "ema_params", "d_params", "spectral", "g_opt", "d_opt"}
    for x, y in zip(jax.tree_util.tree_leaves(sa), jax.tree_util.tree_leaves(sb)):
        np.testing.assert_array_equal(x, y)


def test_method_settings_of_another_family_are_refused_with_the_field(configs, tmp_path):
    cfg = configs.tiny_image(tmp_path)
    cfg.gan = {"n_critic": 5}
    with pytest.raises(ConfigError, match=r"gan.n_critic is a setting of the gan method; this "
                                          r"experiment's method is 'diffusion'"):
        from_config(cfg)
    cfg = configs.family("gan", tmp_path)
    cfg.process = {"name": "vp_cosine"}
    with pytest.raises(ConfigError, match=r"process.name is a setting of the diffusion/classifier"):
        from_config(cfg)
    cfg = configs.family("gan", tmp_path, extra=["gan.loss=wasserstein"])
    with pytest.raises(ConfigError, match="unknown gan.loss='wasserstein'; valid: non_saturating"):
        from_config(cfg)


# --- each family through the loop and the CLI ---------------------------------------------------

@pytest.fixture(scope="module")
def workdirs(configs, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    out = {}
    for fam in ("gan", "vae", "flow", "meanflow"):  # meanflow: a few-step family in compare
        out[fam] = root / fam
        res = train(from_config(configs.family(fam, root, 4)), str(out[fam]))
        assert res["status"] == "done" and Path(res["samples"]).exists()
    return out


def test_likelihood_on_each_family(workdirs, capsys, configs):
    for fam, keys in (("vae", {"elbo", "iwae"}), ("flow", {"exact"})):
        assert main(["likelihood", "--workdir", str(workdirs[fam]), "--num", "16",
                     "--batch", "8"]) == 0
        res = json.loads((workdirs[fam] / "eval" / "likelihood.json").read_text())
        assert set(res["bounds"]) == keys
        for k in keys:
            # the data are uniformly random 8-bit pixels: their entropy, 8 bits/dim, bounds every
            # model's (dequantised: the uniform density on [-1, 1]) from below in expectation,
            # and the ELBO/IWAE bound the model's from above (0.1: sampling error of 16 images)
            assert res["bounds"][k]["bits_per_dim"] > 8.0 - 0.1, (fam, k, res)
    res = json.loads((workdirs["vae"] / "eval" / "likelihood.json").read_text())
    assert res["bounds"]["iwae"]["bits_per_dim"] <= res["bounds"]["elbo"]["bits_per_dim"]
    err = configs.cli_error(capsys, ["likelihood", "--workdir", str(workdirs["gan"])])
    assert "a GAN has no likelihood" in err and "flow" in err and "vae" in err


def test_sample_and_interpolate_each_family(workdirs, capsys, tmp_path, configs):
    for fam in ("gan", "vae", "flow"):
        out = tmp_path / f"{fam}.npz"
        assert main(["sample", "--workdir", str(workdirs[fam]), "--num", "6", "--batch", "4",
                     "--out", str(out)]) == 0
        with np.load(out) as f:
            x = f["images"]
        assert x.shape == (6, 8, 8, 1) and np.all(np.isfinite(x))
        grid = tmp_path / f"{fam}_slerp.npz"
        assert main(["sample", "--workdir", str(workdirs[fam]), "--interpolate", "5", "--num", "3",
                     "--out", str(grid)]) == 0
        with np.load(grid) as f:
            g = f["images"]
        assert g.shape == (15, 8, 8, 1)
    # flow temperature 0 is the image of the zero latent: every sample the same
    out = tmp_path / "t0.npz"
    assert main(["sample", "--workdir", str(workdirs["flow"]), "--num", "3", "--temperature", "0",
                 "--out", str(out)]) == 0
    with np.load(out) as f:
        x = f["images"]
    np.testing.assert_allclose(x[0], x[2], atol=1e-6)
    err = configs.cli_error(capsys, ["sample", "--workdir", str(workdirs["gan"]), "--sampler",
                                     "ddim"])
    assert "--sampler" in err and "gan" in err


@pytest.fixture(scope="module")
def tiny_classifier(configs, workdirs):
    wd = workdirs["gan"].parent / "classifier"
    data = workdirs["gan"].parent / "tiny_family.npz"
    assert main(["train", "--config", str(configs.root / "experiments/fashion_mnist_classifier.py"),
                 "--workdir", str(wd), f"--config.data.dataset=npz:{data}",
                 "--config.data.image_size=8", "--config.model.channels=8",
                 "--config.model.feature_dim=8", "--config.train.steps=2",
                 "--config.train.batch_size=8"]) == 0
    return str(wd)


def test_compare_writes_the_table_json_and_figure(workdirs, tiny_classifier, tmp_path):
    out = tmp_path / "cmp"
    fams = ("gan", "vae", "flow", "meanflow")
    wds = ",".join(str(workdirs[f]) for f in fams)
    assert main(["compare", "--workdirs", wds, "--classifier", tiny_classifier, "--num", "32",
                 "--bpd-num", "8", "--out", str(out)]) == 0
    res = json.loads((out / "compare.json").read_text())
    rows = {r["family"]: r for r in res["rows"]}
    assert list(rows) == list(fams) and res["num"] == 32
    for fam in ("gan", "meanflow"):
        assert rows[fam]["bits_per_dim"] is None and "no likelihood" in rows[fam]["bpd_kind"]
    assert rows["vae"]["bpd_bounds"]["iwae"] <= rows["vae"]["bpd_bounds"]["elbo"]
    assert set(rows["flow"]["bpd_bounds"]) == {"exact"}
    for r in rows.values():  # MeanFlow samples in its one evaluation (meanflow.sample_steps)
        assert r["train_steps"] == 4 and r["images_per_s"] > 0 and r["nfe_per_sample"] == 1
        assert r["fd"] > 0 and 0 <= r["recall"] <= 1
        assert 0 <= r["coverage"] <= 1 and 0 <= r["class_entropy"] <= math.log(10) + 1e-9
        assert math.isclose(sum(r["class_histogram"]), 1.0)
    md = (out / "compare.md").read_text()
    assert md.count("\n| ") == 5 and "no likelihood" in md
    from PIL import Image
    with Image.open(out / "compare.png") as img:  # 3.2 in per family (at least 4) x 7.2 in
        assert img.size == (round(3.2 * 4 * 90), round(7.2 * 90))


def test_a_collapsed_gan_is_flagged_in_the_log(workdirs, tiny_classifier, capsys, monkeypatch):
    from diffusion_jax.eval import metrics, sample_eval
    from diffusion_jax.eval.features import Extractor
    from diffusion_jax.workdir import load

    exp, params, _ = load(workdirs["gan"])
    cov = metrics.class_coverage(np.eye(10)[[3] * 95 + [1] * 5])
    assert cov["collapsed"] and cov["top_class"] == 3 and cov["coverage"] == 0.2
    assert not metrics.class_coverage(np.eye(10)[np.arange(100) % 10])["collapsed"]
    # a judge that puts every sample in class 3: the hook logs the collapse, it does not hide it
    one_class = Extractor("stub judge", lambda x: (x.reshape(x.shape[0], -1)[:, :4],
                                                   jnp.eye(10)[jnp.full(x.shape[0], 3)]))
    monkeypatch.setattr(sample_eval, "make_extractor", lambda *a: one_class)
    import dataclasses
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, fid_num=20))
    row = sample_eval.training_fd(exp, workdirs["gan"])(params, 7, jax.random.key(0))
    assert row["max_class_fraction"] == 1.0 and row["coverage"] == 0.1
    assert "WARNING: mode collapse at step 7: class 3 holds 100% of the samples" in \
        capsys.readouterr().out


# --- latent diffusion on the VAE's spatial latent -----------------------------------------------

def test_latent_diffusion_on_a_trained_autoencoder(configs, tmp_path, capsys):
    ae = tmp_path / "ae"
    train(from_config(configs.family("vae", tmp_path, 2, extra=["model.latent_dim=0",
                                                                 "vae.beta=0.001"])), str(ae))
    cfg = configs.tiny_image(tmp_path)
    cfg.data.dataset = f"npz:{tmp_path / 'tiny_family.npz'}"
    cfg.latent = {"autoencoder": str(ae), "scale": 0.0}
    cfg.model.channel_mult = (1,)
    exp = from_config(cfg)
    m = exp.method
    assert m.shape == (2, 2, 4) and m.pixel_shape == (8, 8, 1)
    # the measured scale makes the training latents unit-variance
    from diffusion_jax.data.sources import first_images, get_source
    x = first_images(get_source(exp.data.dataset, "train"), 64, (8, 8, 1))
    z = m.encode(m.ae_params(), jnp.asarray(x))
    np.testing.assert_allclose(float(jnp.std(z)), 1.0, rtol=1e-3)
    out = train(exp, str(tmp_path / "ldm"))
    assert out["status"] == "done"
    assert main(["sample", "--workdir", str(tmp_path / "ldm"), "--num", "4", "--out",
                 str(tmp_path / "ldm.npz")]) == 0
    with np.load(tmp_path / "ldm.npz") as f:
        assert f["images"].shape == (4, 8, 8, 1) and np.all(np.abs(f["images"]) <= 1)
    # refusals, before compiling: a missing autoencoder, another image shape, a flat latent
    cfg.latent = {"autoencoder": str(tmp_path / "none")}
    with pytest.raises(ConfigError, match="latent.autoencoder=.* holds no checkpoint"):
        from_config(cfg)
    cfg.latent = {"autoencoder": str(ae)}
    cfg.data.image_size = 16
    with pytest.raises(ConfigError, match=r"trained on images of shape \(8, 8, 1\); this "
                                          r"experiment's data has shape \(16, 16, 1\)"):
        from_config(cfg)
