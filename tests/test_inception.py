"""Inception-v3 for FID: 2048-d features from random weights, the standard resize, and weight
files checked by shape and checksum (no weights can be downloaded here)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.eval import inception as I


@pytest.fixture(scope="module")
def random_inception():
    model = I.InceptionV3()
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 299, 299, 3)))
    return model, variables, jax.jit(lambda v, x: model.apply(v, x))


def test_features_are_2048d_and_small_grey_images_are_resized_the_standard_way(random_inception):
    model, variables, apply = random_inception
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1), minval=-1, maxval=1)
    feats, logits = apply(variables, x)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert bool(jnp.all(jnp.isfinite(feats))) and float(jnp.std(feats)) > 0
    # The same as resizing by hand: grey -> RGB, bilinear with half-pixel centres (align_corners
    # False), which at 28 -> 299 puts output pixel i at source coordinate (i + 0.5) * 28/299 - 0.5.
    big = I.resize_299(x)
    assert big.shape == (2, 299, 299, 3)
    src = (np.arange(299) + 0.5) * 28 / 299 - 0.5
    lo = np.clip(np.floor(src).astype(int), 0, 27)
    hi = np.clip(lo + 1, 0, 27)
    w = np.clip(src - lo, 0, 1)
    xn = np.asarray(x[0, :, :, 0])
    rows = xn[lo] * (1 - w)[:, None] + xn[hi] * w[:, None]
    manual = rows[:, lo] * (1 - w)[None] + rows[:, hi] * w[None]
    np.testing.assert_allclose(np.asarray(big[0, :, :, 1]), manual, atol=1e-5)
    np.testing.assert_allclose(apply(variables, big)[0], feats, rtol=1e-4, atol=1e-5)


def test_weight_file_roundtrip_and_checks(random_inception, tmp_path):
    model, variables, apply = random_inception
    path = tmp_path / "w.npz"
    digest = I.save_weights(variables, path)
    _, loaded = I.load_inception(path, expected_sha256=digest)
    x = jax.random.uniform(jax.random.key(2), (1, 32, 32, 3), minval=-1, maxval=1)
    np.testing.assert_allclose(apply(loaded, x)[0], apply(variables, x)[0], rtol=1e-6)
    flat = dict(np.load(path))
    bad = dict(flat)
    bad["params/Mixed_6b/branch7x7_2/conv/kernel"] = np.zeros((7, 1, 128, 128), np.float32)
    np.savez(tmp_path / "shape.npz", **bad)
    with pytest.raises(ValueError, match=r"layer params/Mixed_6b/branch7x7_2/conv/kernel has shape "
                                         r"\(7, 1, 128, 128\), Inception-v3 needs \(1, 7, 128, 128\)"):
        I.load_inception(tmp_path / "shape.npz")
    edited = dict(flat)
    edited["params/fc/bias"] = flat["params/fc/bias"] + 1.0
    np.savez(tmp_path / "edited.npz", **edited)
    with pytest.raises(ValueError, match="checksum mismatch"):
        I.load_inception(tmp_path / "edited.npz")
    with pytest.raises(ValueError, match="not the expected"):
        I.load_inception(path, expected_sha256="0" * 64)
    del flat["params/Conv2d_1a_3x3/conv/kernel"]
    np.savez(tmp_path / "missing.npz", **flat)
    with pytest.raises(ValueError, match=r"missing \['params/Conv2d_1a_3x3/conv/kernel'\]"):
        I.load_inception(tmp_path / "missing.npz")


def test_torch_state_dict_conversion_inverts_the_layout(random_inception):
    """A state dict in pytorch-fid's names and layouts (built from our variables by the inverse
    map) converts back to exactly our variables."""
    _, variables, _ = random_inception
    flat_p = I._flatten(jax.device_get(variables["params"]))
    flat_s = I._flatten(jax.device_get(variables["batch_stats"]))
    sd = {}
    for k, v in flat_p.items():
        node, leaf = k.rsplit("/", 1)
        name = node.replace("/", ".")
        if node == "fc":
            sd[f"fc.{'weight' if leaf == 'kernel' else 'bias'}"] = v.T if leaf == "kernel" else v
        elif leaf == "kernel":
            sd[f"{name}.weight"] = np.transpose(v, (3, 2, 0, 1))
        else:
            sd[f"{name}.{'weight' if leaf == 'scale' else 'bias'}"] = v
    for k, v in flat_s.items():
        node, leaf = k.rsplit("/", 1)
        sd[f"{node.replace('/', '.')}.running_{leaf}"] = v
        sd[f"{node.replace('/', '.')}.num_batches_tracked"] = np.array(0)
    assert "Mixed_7c.branch3x3dbl_3b.conv.weight" in sd and sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    conv = I.from_torch_state_dict(sd)
    for a, b in zip(jax.tree_util.tree_leaves(conv), jax.tree_util.tree_leaves(jax.device_get(variables))):
        np.testing.assert_array_equal(a, b)
    assert jax.tree_util.tree_structure(conv) == jax.tree_util.tree_structure(jax.device_get(variables))
