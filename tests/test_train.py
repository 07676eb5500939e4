"""Training: loss decreases, purity, EMA, exact resume, iterator state, SIGTERM, experiments."""

import glob
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.config import apply_override, load_config
from diffusion_jax.data.sources import ArraySource
from diffusion_jax.parallel import make_mesh
from diffusion_jax.train import create_state, make_train_step
from diffusion_jax.train.ema import ema_update
from diffusion_jax.experiment import conditioning, example_inputs
from diffusion_jax.train.loop import build, data_shape, train


def tiny_config(tmp_path, steps=4, n_images=64):
    """The toy experiment at smoke size: an MLP compiles in seconds, so the loop's mechanics
    (grain iterator, orbax, resume, signals) are tested without waiting on a U-Net compile."""
    cfg = load_config("experiments/toy_gmm.py")
    for o in ["model.hidden=16", "model.depth=2", f"train.steps={steps}", "train.batch_size=8",
              "train.log_every=1", "train.ckpt_every=2", "sample.num=16", "sample.num_steps=2",
              "optimizer.warmup_steps=1"]:
        apply_override(cfg, o)
    return cfg


def tiny_image_config(tmp_path, steps=2, n_images=64):
    cfg = load_config("experiments/fashion_mnist_ddpm.py")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(n_images, 8, 8, 1), dtype=np.uint8)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=imgs, labels=rng.integers(0, 10, n_images))
    for o in [f"data.dataset=npz:{path}", "data.image_size=8", "model.channels=8",
              "model.channel_mult=(1, 2)", "model.attn_resolutions=()", f"train.steps={steps}",
              "train.batch_size=8", "train.log_every=1", "train.ckpt_every=2", "train.ema_start=0",
              "sample.num=4", "sample.num_steps=2", "optimizer.warmup_steps=1",
              "train.time_limit_minutes=0.0"]:
        apply_override(cfg, o)
    return cfg


@pytest.fixture(scope="module")
def tiny_step():
    import pathlib, tempfile
    cfg = tiny_image_config(pathlib.Path(tempfile.mkdtemp()))
    model, process, par, loss, tx = build(cfg)
    mesh = make_mesh({"data": -1, "fsdp": 1})
    state, sh = create_state(model, tx, (jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,))),
                             jax.random.key(0), mesh)
    step = jax.jit(make_train_step(model, process, par, loss, tx, 0.9))
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
    from diffusion_jax.train.checkpoint import Checkpointer
    import orbax.checkpoint as ocp
    ck = Checkpointer(workdir)
    step = ck.latest_step()
    out = ck.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                           data=ocp.args.JsonRestore()))
    return step, out["state"], out["data"]


def test_resume_equals_uninterrupted_run(tmp_path):
    cfg = tiny_config(tmp_path, steps=4)
    train(cfg, str(tmp_path / "full"))
    cfg2 = tiny_config(tmp_path, steps=2)
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


def test_sigterm_leaves_a_restorable_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, steps=50)
    apply_override(cfg, "train.ckpt_every=1000")
    src = _KillAt(np.zeros((64, 2), np.float32), at=8 * 3 + 1)  # during the 4th batch
    monkeypatch.setattr("diffusion_jax.train.loop.get_source", lambda *a, **k: src)
    out = train(cfg, str(tmp_path / "run"))
    # grain prefetches, so the signal can land a few batches before the 4th is consumed
    assert out["status"] == "preempted" and 1 <= out["step"] < 50
    step, _, data = _params(tmp_path / "run")
    assert step == out["step"] and data["next_index"] == step


def test_incompatible_checkpoint_is_named(tmp_path):
    cfg = tiny_config(tmp_path, steps=2)
    train(cfg, str(tmp_path / "run"))
    apply_override(cfg, "model.hidden=32")
    with pytest.raises(ValueError, match="model.hidden: checkpoint 16 vs config 32"):
        train(cfg, str(tmp_path / "run"))


def test_bad_config_input(tmp_path):
    cfg = tiny_image_config(tmp_path)
    with pytest.raises(KeyError, match="did you mean 'train.steps'"):
        apply_override(cfg, "train.stpes=3")
    apply_override(cfg, "data.image_size=9")
    with pytest.raises(ValueError, match="image_size 9 is not divisible by 2\\*\\*1"):
        build(cfg)
    from diffusion_jax.data.sources import find_fashion_mnist
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        find_fashion_mnist(str(tmp_path))
    with pytest.raises(ValueError, match="not divisible by the batch-sharding size 8"):
        from diffusion_jax.parallel import batch_size_per_shard
        batch_size_per_shard(make_mesh({"data": 8}), 12)
    with pytest.raises(ValueError, match="has 4 devices but 8 are available"):
        make_mesh({"data": 4, "fsdp": 1})
    with pytest.raises(ValueError, match="valid axes: data, fsdp"):
        make_mesh({"dta": -1})


@pytest.mark.parametrize("path", sorted(set(glob.glob("experiments/*.py"))
                                        - set(glob.glob("experiments/*classifier*.py"))))
def test_every_experiment_builds_and_steps(path):
    cfg = load_config(path)
    if cfg.model.name == "unet":  # smoke size: same code, smaller numbers
        for o in ["model.channels=8", "model.dtype='float32'"]:
            apply_override(cfg, o)
    model, process, par, loss, tx = build(cfg)
    shape = data_shape(cfg)
    state, sh = create_state(model, tx, example_inputs(cfg), jax.random.key(0),
                             make_mesh({"data": -1}))
    step = jax.jit(make_train_step(model, process, par, loss, tx, 0.99,
                                   conditioning=conditioning(cfg)))
    batch = {"image": jnp.zeros((2,) + shape), "label": jnp.zeros((2,), jnp.int32)}
    state, m = step(state, batch, jax.random.key(0))
    assert np.isfinite(float(m["loss"])) and int(state.step) == 1


def test_cli_train_then_sample(tmp_path):
    from diffusion_jax.cli import main

    cfg = tiny_image_config(tmp_path, steps=2)
    overrides = [f"--config.data.dataset={cfg.data.dataset}", "--config.data.image_size=8",
                 "--config.model.channels=8", "--config.model.channel_mult=(1,2)",
                 "--config.model.attn_resolutions=()", "--config.train.steps=2",
                 "--config.train.batch_size=8", "--config.sample.num=4",
                 "--config.sample.num_steps=2", "--config.train.time_limit_minutes=0.0"]
    wd = str(tmp_path / "cli")
    assert main(["train", "--config", "experiments/fashion_mnist_ddpm.py", "--workdir", wd]
                + overrides) == 0
    assert main(["sample", "--workdir", wd, "--sampler", "unipc", "--steps", "3", "--num", "4",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert main(["sample", "--workdir", wd, "--num", "4", "--out", str(tmp_path / "g.npz")]) == 0
    with np.load(tmp_path / "g.npz", allow_pickle=False) as f:
        assert f["images"].shape == (4, 8, 8, 1) and np.all(np.isfinite(f["images"]))
    assert (tmp_path / "g.png").stat().st_size > 100
    with pytest.raises(SystemExit, match="no checkpoint"):
        main(["sample", "--workdir", str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")])


class _NaNAfter(ArraySource):
    """Finite data for the first ``n`` examples read, NaN after (a run that diverges)."""

    def __init__(self, n):
        super().__init__(np.zeros((256, 2), np.float32))
        self.n, self.count = n, 0

    def __getitem__(self, i):
        self.count += 1
        ex = super().__getitem__(i)
        return {**ex, "image": ex["image"] + (np.nan if self.count > self.n else 0.0)}


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, steps=20)
    # NaN data from the 7th batch on (grain prefetches, so reads run a little ahead of steps)
    monkeypatch.setattr("diffusion_jax.train.loop.get_source", lambda *a, **k: _NaNAfter(8 * 6))
    with pytest.raises(FloatingPointError, match=r"loss is nan at step \d+") as err:
        train(cfg, str(tmp_path / "run"))
    bad = int(str(err.value).split("at step ")[1].split(";")[0])
    step, state, _ = _params(tmp_path / "run")
    assert step == 2 * ((bad - 1) // 2) and step >= 2  # the last checkpoint before the NaN
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state))


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    cfg = tiny_config(tmp_path, steps=4)
    train(cfg, str(tmp_path / "run"))
    for f in (tmp_path / "run" / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")  # a write cut short
    apply_override(cfg, "train.steps=6")
    out = train(cfg, str(tmp_path / "run"))
    assert "checkpoint step 4 is unreadable" in capsys.readouterr().out
    assert out["step"] == 6


def test_training_fd_without_an_extractor_is_refused_before_compiling(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.train.fid_every = 2
    with pytest.raises(ValueError, match="fid_every=2 needs a feature extractor"):
        train(cfg, str(tmp_path / "run"))


@pytest.mark.parametrize("path", sorted(glob.glob("experiments/*classifier*.py")))
def test_classifier_experiments_build_and_step(path, tmp_path):
    from diffusion_jax.models.classifier import Classifier
    from diffusion_jax.processes import make_process
    from diffusion_jax.train.classifier import load_classifier, train_classifier

    cfg = load_config(path)
    rng = np.random.default_rng(0)
    src = ArraySource(rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 64))
    model = Classifier(10, 8, 16, cfg.model.noise_conditional, head=cfg.model.head)
    process = make_process(cfg.process.name) if cfg.process.name else None
    out = train_classifier(model, src, src, steps=2, batch_size=16, lr=cfg.train.lr, seed=0,
                           workdir=tmp_path, process=process, shift=cfg.train.shift)
    assert (out["test_accuracy"] is None) == (process is not None)
    clf, params = load_classifier(tmp_path)
    assert clf.head == cfg.model.head and clf.noise_conditional == cfg.model.noise_conditional
