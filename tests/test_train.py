"""Training: loss decreases, purity, EMA, exact resume, iterator state, SIGTERM, experiments."""

import json
import os
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from diffusion_jax.config import apply_override, load_config
from diffusion_jax.data.sources import ArraySource
from diffusion_jax.experiment import ConfigError, from_config
from diffusion_jax.methods.ema import ema_update
from diffusion_jax.parallel import make_mesh
from diffusion_jax.train.loop import train as train_exp

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def train(cfg, workdir):
    return train_exp(from_config(cfg), workdir)


@pytest.fixture(scope="module")
def tiny_step(configs, tmp_path_factory):
    exp = from_config(configs.tiny_image(tmp_path_factory.mktemp("tiny")))
    method = exp.method
    mesh = make_mesh({"data": -1, "fsdp": 1})
    _, sh = method.abstract_state(mesh, exp.mesh.rules)
    state = jax.jit(method.init, out_shardings=sh)(jax.random.key(0))
    step = jax.jit(method.train_step)
    pattern = jnp.tile(jnp.linspace(-1, 1, 8)[None, :, None, None], (8, 1, 8, 1))  # learnable
    batch = {"image": pattern, "label": jnp.zeros((8,), jnp.int32)}
    return step, state, batch


def test_loss_decreases_on_a_tiny_batch(tiny_step):
    step, state, batch = tiny_step
    losses = []
    for _ in range(60):
        state, m = step(state, batch, jax.random.key(0))
        losses.append(float(m["loss"]))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_train_step_is_pure(tiny_step):
    step, state, batch = tiny_step
    a, ma = step(state, batch, jax.random.key(3))
    b, mb = step(state, batch, jax.random.key(3))
    assert float(ma["loss"]) == float(mb["loss"])
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_ema_math():
    e = ema_update({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 6.0])}, 0.75)
    np.testing.assert_allclose(e["w"], [1.5, 3.0])


def _params(workdir):
    from diffusion_jax.checkpoint import Checkpointer
    import orbax.checkpoint as ocp
    ck = Checkpointer(workdir)
    step = ck.latest_step()
    out = ck.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                           data=ocp.args.JsonRestore()))
    return step, out["state"], out["data"]


def test_resume_equals_uninterrupted_run(configs, tmp_path):
    cfg = configs.toy(steps=4)
    train(cfg, str(tmp_path / "full"))
    cfg2 = configs.toy(steps=2)
    train(cfg2, str(tmp_path / "split"))
    apply_override(cfg2, "train.steps=4")
    out = train(cfg2, str(tmp_path / "split"))
    assert out["step"] == 4
    s1, full, d1 = _params(tmp_path / "full")
    s2, split, d2 = _params(tmp_path / "split")
    assert s1 == s2 == 4 and d1 == d2 and d1 == {"next_index": 4}  # iterator state is stored
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(split)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    rows = [json.loads(l) for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert (tmp_path / "full" / "samples.png").exists() and (tmp_path / "full" / "loss.png").exists()
    full_rows = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in full_rows] == [1, 2, 3, 4]


class _KillAt(ArraySource):
    """A source that sends this process SIGTERM when example ``at`` is read."""

    def __init__(self, images, at):
        super().__init__(images)
        self.at, self.count = at, 0

    def __getitem__(self, i):
        self.count += 1
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__getitem__(i)


def test_sigterm_leaves_a_restorable_checkpoint(configs, tmp_path, monkeypatch):
    cfg = configs.toy(steps=50)
    apply_override(cfg, "train.ckpt_every=1000")
    src = _KillAt(np.zeros((64, 2), np.float32), at=8 * 3 + 1)  # during the 4th batch
    monkeypatch.setattr("diffusion_jax.train.loop.get_source", lambda *a, **k: src)
    out = train(cfg, str(tmp_path / "run"))
    # grain prefetches, so the signal can land a few batches before the 4th is consumed
    assert out["status"] == "preempted" and 1 <= out["step"] < 50
    step, _, data = _params(tmp_path / "run")
    assert step == out["step"] and data["next_index"] == step


def test_incompatible_checkpoint_is_named(configs, tmp_path):
    cfg = configs.toy(steps=2)
    train(cfg, str(tmp_path / "run"))
    apply_override(cfg, "model.hidden=32")
    with pytest.raises(ValueError, match="model.hidden: checkpoint 16 vs config 32"):
        train(cfg, str(tmp_path / "run"))


def test_bad_config_input(configs, tmp_path):
    cfg = configs.tiny_image(tmp_path)
    with pytest.raises(KeyError, match="did you mean 'train.steps'"):
        apply_override(cfg, "train.stpes=3")
    apply_override(cfg, "data.image_size=9")
    with pytest.raises(ValueError, match="image_size 9 is not divisible by 2\\*\\*1"):
        from_config(cfg)
    from diffusion_jax.data.sources import find_fashion_mnist
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        find_fashion_mnist(str(tmp_path))
    with pytest.raises(ValueError, match="not divisible by the batch-sharding size 8"):
        from diffusion_jax.parallel import batch_size_per_shard
        batch_size_per_shard(make_mesh({"data": 8}), 12)
    with pytest.raises(ValueError, match="has 4 devices but 8 are available"):
        make_mesh({"data": 4, "fsdp": 1})
    with pytest.raises(ValueError, match="has no 'data' axis"):
        make_mesh({"dta": -1})


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c, "method", "gann"), "unknown method 'gann'; valid: diffusion, classifier"),
    (lambda c: setattr(c.model, "name", "vit"), "unknown model 'vit'; valid: 'unet', 'dit', 'mlp'"),
    (lambda c: c.train.__delitem__("steps"), "missing the required field train.steps"),
    (lambda c: c.__delitem__("data"), "missing the required section 'data'"),
    (lambda c: setattr(c.model, "channel", 4), "unknown config key model.channel; did you mean "
                                                "model.channels"),
    (lambda c: setattr(c, "sharding_rules", (("mlp", "tensor"),)),
     "sharding rule 'mlp' -> 'tensor' names a mesh axis .* mesh axes: data, fsdp"),
    (lambda c: setattr(c.train, "ckpt_every", 0), "train.ckpt_every=0 must be >= 1"),
])
def test_bad_experiments_are_named_before_compiling(configs, tmp_path, change, message):
    cfg = configs.tiny_image(tmp_path)
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        from_config(cfg)


# the two largest U-Net configs take a minute between them even at smoke size: -m slow
SLOW_EXPERIMENTS = ("celeba64_ddpm.py", "cifar10_ddpmpp.py")


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_EXPERIMENTS
                                  else p for p in sorted(p.name for p in EXPERIMENTS.glob("*.py")
                                                         if not p.name.startswith("_"))])
def test_every_experiment_builds_and_its_step_lowers(path):
    cfg = load_config(str(EXPERIMENTS / path))
    needs = [f"{k}.{f}" for k, v in cfg.items() if isinstance(v, ConfigDict)
             for f in ("teacher", "autoencoder") if v.get(f)]
    if str(cfg.get("init_from", "")).startswith("runs/"):  # fine-tunes a trained workdir
        needs.append("init_from")
    if needs:  # built on another workdir (test_consistency, test_families, test_few_step)
        apply_override(cfg, f"{needs[0]}='/nonexistent/run'")
        with pytest.raises(ConfigError, match="'/nonexistent/run' holds no checkpoint"):
            from_config(cfg)
        return
    smoke = {"unet": ["model.channels=8", "model.num_res_blocks=1", "model.dtype='float32'"],
             "dit": ["model.hidden_size=32", "model.depth=1", "model.num_heads=4",
                     "model.dtype='float32'"],
             "classifier": ["model.channels=8"], "gan": ["model.ch=8", "model.d_ch=8"],
             "vae": ["model.ch=8"], "flow": ["model.steps=1", "model.hidden=8"],
             "autoregressive": ["model.channels=8", "model.blocks=1"]}
    if cfg.get("init_from"):  # a pretrained folder's network: the tiny SD fixture stands in
        apply_override(cfg, f"init_from='{Path(__file__).parent / 'fixtures/latent/sd15_tiny'}'")
        apply_override(cfg, "data.image_size=16")
    kind = cfg.method if cfg.method in smoke else cfg.get("model", {}).get("name", "unet")
    for o in smoke.get(kind, []) if not cfg.get("init_from") else []:  # smoke size: the build, the layout and one step are checked
        apply_override(cfg, o)
    exp = from_config(cfg)
    method = exp.method
    abstract, sh = method.abstract_state(make_mesh({"data": -1}), exp.mesh.rules)
    # Lowered on the 8-device mesh, not compiled: the build, the shardings and the step's program
    # are checked in seconds; the steps themselves run for real in the loop, CLI and family tests
    init = jax.jit(method.init, out_shardings=sh).lower(jax.random.key(0))
    batch = {"image": np.zeros((2,) + exp.shape, np.float32), "label": np.zeros((2,), np.int32)}
    if method.example_fields:
        batch = method.host_batch({**batch, "caption": np.array(["a cat", "a dog"])})
    new_state, m = jax.jit(method.train_step).lower(abstract, batch, jax.random.key(0)).out_info
    assert m["loss"].shape == ()
    structure = jax.tree_util.tree_structure
    assert structure(init.out_info) == structure(abstract) == structure(new_state)


def test_cli_train_then_sample(configs, tmp_path, capsys):
    from diffusion_jax.cli import main

    cfg = configs.tiny_image(tmp_path, steps=2)
    overrides = [f"--config.data.dataset={cfg.data.dataset}", "--config.data.image_size=8",
                 "--config.model.channels=8", "--config.model.channel_mult=(1,2)",
                 "--config.model.attn_resolutions=()", "--config.train.steps=2",
                 "--config.train.batch_size=8", "--config.sample.num=4",
                 "--config.sample.num_steps=2", "--config.train.time_limit_minutes=0.0"]
    wd = str(tmp_path / "cli")
    assert main(["train", "--config", "experiments/fashion_mnist_ddpm.py", "--workdir", wd]
                + overrides) == 0
    for out in ("g.png", "g.npz"):
        assert main(["sample", "--workdir", wd, "--sampler", "unipc", "--steps", "3", "--num",
                     "4", "--out", str(tmp_path / out)]) == 0
    with np.load(tmp_path / "g.npz", allow_pickle=False) as f:
        images = f["images"]
    assert images.shape == (4, 8, 8, 1) and np.all(np.isfinite(images))
    # the PNG grid holds those samples: 2 x 2 tiles of 8x8, 2-pixel padding, scaled 2x
    from PIL import Image
    from diffusion_jax.utils.images import to_uint8
    grid = np.asarray(Image.open(tmp_path / "g.png"))[::2, ::2]
    for i, want in enumerate(to_uint8(images)[..., 0]):
        r, q = divmod(i, 2)
        np.testing.assert_array_equal(grid[2 + r * 10: 10 + r * 10, 2 + q * 10: 10 + q * 10],
                                      want)
    err = configs.cli_error(capsys, ["sample", "--workdir", str(tmp_path / "empty"),
                                     "--out", str(tmp_path / "x.png")])
    assert "no checkpoints in" in err and not (tmp_path / "empty").exists()
    assert "--steps must be >= 1" in configs.cli_error(capsys, ["sample", "--workdir", wd,
                                                                "--steps", "0"])
    assert "--num must be >= 1" in configs.cli_error(capsys, ["sample", "--workdir", wd,
                                                              "--num", "0"])


def test_training_fd_without_an_extractor_is_refused_before_compiling(configs, tmp_path):
    cfg = configs.toy()
    cfg.train.fid_every = 2
    with pytest.raises(ValueError, match="fid_every=2 needs a feature extractor"):
        train(cfg, str(tmp_path / "run"))


def test_classifier_trains_through_the_loop_and_resumes(tmp_path):
    from diffusion_jax.workdir import load_classifier

    rng = np.random.default_rng(0)
    path = tmp_path / "c.npz"
    np.savez(path, images=rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8),
             labels=rng.integers(0, 10, 64))
    cfg = load_config(str(EXPERIMENTS / "fashion_mnist_guidance_classifier.py"))
    for o in [f"data.dataset=npz:{path}", "model.channels=8", "model.feature_dim=16",
              "train.steps=2", "train.batch_size=16", "train.ckpt_every=1", "augment.shift=2"]:
        apply_override(cfg, o)
    out = train(cfg, str(tmp_path / "clf"))
    assert out["status"] == "done" and 0 <= out["test_accuracy"] <= 1
    apply_override(cfg, "train.steps=3")
    assert train(cfg, str(tmp_path / "clf"))["step"] == 3  # resumed, not restarted
    model, params, info = load_classifier(tmp_path / "clf")
    assert info["noise_conditional"] and info["process"] == "vp_cosine" and info["num_classes"] == 10
    logits = model.apply({"params": params}, jnp.zeros((2, 28, 28, 1)), jnp.full((2,), 0.5))
    assert logits.shape == (2, 10)


def test_tensorboard_scalars_and_images_are_written(configs, tmp_path):
    from diffusion_jax.train.logger import read_scalars

    cfg = configs.tiny_image(tmp_path, steps=2)
    apply_override(cfg, "train.sample_every=2")
    train(cfg, str(tmp_path / "run"))
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in scalars["loss"]] == [r["step"] for r in rows] == [1, 2]
    np.testing.assert_allclose([v for _, v in scalars["loss"]], [r["loss"] for r in rows], rtol=1e-6)
    assert "grad_norm" in scalars
    events = b"".join(p.read_bytes() for p in (tmp_path / "run" / "tensorboard").rglob("events*"))
    assert b"samples" in events and b"\x89PNG" in events  # the preview grid as an image


def test_toy_step_equals_an_independent_reimplementation(configs):
    """One step of the toy experiment against the same step written out here from the papers:
    VP-linear (Song et al. 2021: log alpha = -t^2 (b1 - b0)/4 - t b0/2), the antithetic time
    sampler (Kingma et al. 2021), eps prediction with the 'simple' loss (Ho et al. 2020), then
    the experiment's optimizer and EMA."""
    exp = from_config(configs.toy(4))
    m, b = exp.method, 8
    state = m.init(jax.random.key(0))
    x0 = jax.random.normal(jax.random.key(1), (b, 2))
    batch = {"image": x0, "label": jnp.zeros((b,), jnp.int32)}
    key = jax.random.key(2)
    new_state, metrics = jax.jit(m.train_step)(state, batch, key)

    k = jax.random.fold_in(key, 0)  # the per-step key: fold_in(key, step)
    k_t, k_eps, k_drop = jax.random.split(k, 3)
    lo, hi = m.process.t_min, m.process.t_max
    t = lo + (hi - lo) * ((jax.random.uniform(k_t, ()) + jnp.arange(b) / b) % 1.0)
    log_a = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    a, s = jnp.exp(log_a)[:, None], jnp.sqrt(1.0 - jnp.exp(2 * log_a))[:, None]
    eps = jax.random.normal(k_eps, x0.shape)

    def loss(p):
        out = m.model.apply({"params": p}, a * x0 + s * eps, t, train=True, rngs={"dropout": k_drop})
        return jnp.mean((out - eps) ** 2)

    want_loss, grads = jax.value_and_grad(loss)(state.params)
    np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=1e-5)
    updates, _ = m.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    for x, y in zip(jax.tree_util.tree_leaves(new_state.params), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    ema = jax.tree_util.tree_map(lambda e, p: 0.999 * e + 0.001 * p, state.ema_params, params)
    for x, y in zip(jax.tree_util.tree_leaves(new_state.ema_params), jax.tree_util.tree_leaves(ema)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert int(new_state.step) == 1
