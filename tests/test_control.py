"""Conditioning in the U-Net (class, cross-attention context, low-res concatenation), the training
conditioning (label dropout, downsampling), and the control flags of `sample` end to end."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.cli import main
from diffusion_jax.conditioning import Conditioning, downsample
from diffusion_jax.config import apply_override
from diffusion_jax.experiment import from_config
from diffusion_jax.methods.diffusion_sampling import check_sample_inputs, make_sample_fn
from diffusion_jax.models import UNet, UNetConfig
from diffusion_jax.train.loop import train
from diffusion_jax.utils.images import make_mask

X = jnp.zeros((2, 8, 8, 1))
T = jnp.full((2,), 0.5)


def _perturb(params, key):
    """Random parameters everywhere: zero-initialised output layers would hide any dependence."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def tiny_unet(**kw):
    return UNet(UNetConfig(channels=8, channel_mult=(1, 2), attn_resolutions=(4,), **kw))


def test_cross_attention_uses_the_context_and_checks_its_width():
    model = tiny_unet(context_dim=6)
    ctx = jax.random.normal(jax.random.key(0), (2, 3, 6))
    params = jax.jit(lambda k, c: model.init(k, X, T, context=c))(jax.random.key(1), ctx)["params"]
    assert any("CrossAttnBlock" in k for k in params)
    params = _perturb(params, jax.random.key(2))
    x = jax.random.normal(jax.random.key(3), X.shape)
    apply = jax.jit(lambda c: model.apply({"params": params}, x, T, context=c))
    a = apply(ctx)
    b = apply(jax.random.normal(jax.random.key(4), ctx.shape))
    c = apply(ctx[:, :2])  # any sequence length
    assert a.shape == X.shape and float(jnp.abs(a - b).max()) > 1e-3 and c.shape == X.shape
    with pytest.raises(ValueError, match=r"context must be \[B=2, L, 6\], got shape \(2, 3, 5\)"):
        model.apply({"params": params}, x, T, context=jnp.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="pass context"):
        model.apply({"params": params}, x, T)
    with pytest.raises(ValueError, match="no cross-attention"):
        tiny_unet().init(jax.random.key(1), X, T, context=ctx)


def test_low_res_concatenation_and_class_checks():
    model = tiny_unet(low_res_size=4)
    low = jnp.ones((2, 4, 4, 1))
    params = jax.jit(lambda k, lr: model.init(k, X, T, low_res=lr))(jax.random.key(0), low)["params"]
    params = _perturb(params, jax.random.key(1))
    a = model.apply({"params": params}, X, T, low_res=low)
    b = model.apply({"params": params}, X, T, low_res=-low)
    assert a.shape == X.shape and float(jnp.abs(a - b).max()) > 1e-3
    with pytest.raises(ValueError, match=r"super-resolution U-Net: pass low_res of shape \[2, 4, 4, C\]"):
        model.apply({"params": params}, X, T)
    with pytest.raises(ValueError, match="no class conditioning"):
        tiny_unet().init(jax.random.key(0), X, T, jnp.zeros((2,), jnp.int32))


def test_training_conditioning_drops_labels_and_downsamples():
    imgs = jax.random.normal(jax.random.key(0), (4000, 4, 4, 1))
    batch = {"image": imgs, "label": jnp.arange(4000) % 10}
    cond = Conditioning(num_classes=10, low_res_size=2, drop_prob=0.2)(batch, jax.random.key(1))
    dropped = np.asarray(cond["y"] == 10)
    assert abs(dropped.mean() - 0.2) < 0.03  # 4 s.e.
    np.testing.assert_array_equal(np.asarray(cond["y"])[~dropped], np.arange(4000)[~dropped] % 10)
    np.testing.assert_allclose(cond["low_res"][:, 0, 1, 0], imgs[:, :2, 2:, 0].mean((1, 2)), atol=1e-6)
    with pytest.raises(ValueError, match="must divide"):
        downsample(imgs, 3)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        Conditioning(num_classes=10, drop_prob=1.0)


def test_guidance_on_an_unconditional_model_is_refused_before_compiling():
    with pytest.raises(ValueError, match="no class conditioning"):
        check_sample_inputs(tiny_unet(), {"y": jnp.zeros(2, jnp.int32)}, 2.0, None, X.shape)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\]"):
        check_sample_inputs(tiny_unet(num_classes=10), {"y": jnp.array([0, 11])}, 2.0, None, X.shape)
    with pytest.raises(ValueError, match="does not broadcast"):
        make_sample_fn(tiny_unet(), None, None, "ddim", 2, "uniform")(
            None, X, jax.random.key(0), known=X, mask=jnp.ones((3, 3)))


def test_named_masks():
    m = make_mask("center", (8, 8, 1))
    assert m.shape == (8, 8, 1) and m[4, 4, 0] == 0 and m[0, 0, 0] == 1 and m.mean() == 0.75
    assert make_mask("left", (8, 8, 1))[:, :4].sum() == 0
    with pytest.raises(ValueError, match="unknown mask 'middle'"):
        make_mask("middle", (8, 8, 1))


@pytest.fixture(scope="module")
def cond_sr_workdir(tmp_path_factory, configs):
    """A 2-step class-conditional 8x8 super-resolution model (4x4 -> 8x8) trained by the loop."""
    tmp = tmp_path_factory.mktemp("ctl")
    cfg = configs.tiny_image(tmp)
    for o in ["model.conditional=True", "model.low_res_size=4", "sample.num=10",
              "sample.guidance=2.0"]:
        apply_override(cfg, o)
    out = train(from_config(cfg), str(tmp / "wd"))
    assert out["status"] == "done"
    return tmp / "wd"


def test_sample_cli_with_labels_guidance_and_low_res(cond_sr_workdir, tmp_path):
    out = tmp_path / "g.npz"
    assert main(["sample", "--workdir", str(cond_sr_workdir), "--labels", "all", "--guidance", "2",
                 "--low-res", "test", "--num", "20", "--steps", "2", "--out", str(out)]) == 0
    f = np.load(out)
    assert f["images"].shape == (20, 8, 8, 1) and np.isfinite(f["images"]).all()
    np.testing.assert_array_equal(f["labels"], np.repeat(np.arange(10), 2))


def test_sample_cli_inpainting_and_sdedit(cond_sr_workdir, tmp_path, capsys):
    from diffusion_jax.data import get_source
    from diffusion_jax.workdir import read_experiment

    wd = str(cond_sr_workdir)
    src = get_source(read_experiment(wd).data.dataset, "test")
    init = np.stack([src[i]["image"] for i in range(4)]).astype(np.float32) / 127.5 - 1
    png = tmp_path / "inp.png"
    assert main(["sample", "--workdir", wd, "--labels", "3", "--low-res", "test", "--num", "4",
                 "--init-image", "test", "--mask", "left", "--resample", "2", "--steps", "2",
                 "--out", str(png)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert png.exists() and printed["inputs"].endswith("inp_input.png")
    npz = tmp_path / "inp.npz"
    for flags in (["--mask", "right"], ["--strength", "0.5"], ["--strength", "0"]):
        assert main(["sample", "--workdir", wd, "--low-res", "test", "--num", "4", "--steps", "2",
                     "--init-image", "test", *flags, "--out", str(npz)]) == 0
        x = np.load(npz)["images"]
        if flags[0] == "--mask":  # known (left) half kept exactly
            np.testing.assert_allclose(x[:, :, :4], init[:, :, :4], atol=1e-6)
        if flags == ["--strength", "0"]:
            np.testing.assert_allclose(x, init, atol=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--strength", "1.5", "--init-image", "test"], r"--strength must be in \[0, 1\]"),
    (["--mask", "center"], "pass --init-image"),
    (["--labels", "12", "--low-res", "test"], r"labels must be in \[0, 10\), got values in \[12, 12\]"),
    (["--labels", "cat", "--low-res", "test"], "--labels 'cat': give 'all', a class number 0..9"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--num", "-3"], "--num must be >= 1"),
    (["--labels", "all"], "super-resolution model"),
    (["--resample", "3"], "RePaint"),
])
def test_sample_cli_bad_input(cond_sr_workdir, configs, capsys, flags, message):
    import re

    err = configs.cli_error(capsys, ["sample", "--workdir", str(cond_sr_workdir), *flags])
    assert re.search(message, err), err


def _classifier_workdir(tmp_path, name, process):
    from diffusion_jax.config import apply_override, load_config

    rng = np.random.default_rng(0)
    path = tmp_path / "c.npz"
    np.savez(path, images=rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8),
             labels=rng.integers(0, 10, 32))
    cfg = load_config(str(Path(__file__).resolve().parent.parent / "experiments"
                          / "fashion_mnist_classifier.py"))
    for o in [f"data.dataset=npz:{path}", "data.image_size=8", "model.channels=8",
              "model.feature_dim=16", "model.head=mean", "train.steps=2", "train.batch_size=8",
              f"process.name={process}"]:
        apply_override(cfg, o)
    train(from_config(cfg), str(tmp_path / name))
    return str(tmp_path / name)


def test_sample_cli_classifier_guidance(cond_sr_workdir, configs, tmp_path, capsys):
    noisy = _classifier_workdir(tmp_path, "noisy", "vp_cosine")
    out = tmp_path / "cg.npz"
    assert main(["sample", "--workdir", str(cond_sr_workdir), "--classifier", noisy,
                 "--classifier-scale", "2", "--labels", "all", "--low-res", "test", "--num", "10",
                 "--steps", "2", "--out", str(out)]) == 0
    assert np.isfinite(np.load(out)["images"]).all()
    clean = _classifier_workdir(tmp_path, "clean", "")
    err = configs.cli_error(capsys, ["sample", "--workdir", str(cond_sr_workdir), "--classifier",
                                     clean, "--labels", "all", "--low-res", "test"])
    assert "trained on clean images" in err
