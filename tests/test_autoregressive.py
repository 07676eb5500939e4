"""The autoregressive family: causal masks (autodiff Jacobians), a likelihood that is a
distribution over the 256 values, and pixel-by-pixel sampling that reproduces known
distributions; then the family through the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.cli import main
from diffusion_jax.likelihood import logistic_mixture_logp
from diffusion_jax.methods.autoregressive import quantize, sample_pixels
from diffusion_jax.models.pixelcnn import PixelCNN, receptive_field

LEVELS = jnp.arange(256) / 127.5 - 1.0


def test_the_network_is_causal_in_raster_order():
    """d out(i) / d x(j) == 0 for every pixel j at or after pixel i (raster order), and the
    network does see the pixels before it (the mask is not trivially empty)."""
    h = w = 5
    net = PixelCNN(channels=8, blocks=2, num_mix=2)
    x = jax.random.normal(jax.random.key(0), (1, h, w, 1))
    params = net.init(jax.random.key(1), x)["params"]
    # perturb every parameter so that the zero-initialised gates pass gradients
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    out = lambda x: jnp.concatenate(net.apply({"params": params}, x), -1)[0]  # [h, w, 3K]
    jac = jax.jacrev(out)(x)[..., 0, :, :, 0]  # [h, w, 3K, h, w]
    dep = np.abs(np.asarray(jac)).sum(axis=2).reshape(h * w, h * w)  # out pixel x in pixel
    future = np.triu(np.ones((h * w, h * w), bool))  # j >= i
    assert dep[future].max() == 0.0
    assert np.all(dep[np.tril(np.ones((h * w, h * w), bool), -1)].reshape(-1) >= 0)
    assert dep[h * w - 1, : h * w - 1].min() > 0  # the last pixel sees every earlier one
    assert dep[w + 1, 0] > 0 and dep[w + 1, w] > 0  # above-left and directly left


def test_the_receptive_field_window_gives_the_full_networks_outputs():
    """Sampling evaluates the network on a crop the size of its receptive field: at every pixel
    of a 24x26 image, the crop's output equals the whole image's (perturbed parameters)."""
    h, w, blocks = 24, 26, 2
    net = PixelCNN(channels=6, blocks=blocks, num_mix=2)
    x = jax.random.uniform(jax.random.key(0), (2, h, w, 1), minval=-1, maxval=1)
    params = net.init(jax.random.key(1), x)["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    apply = jax.jit(lambda x: jnp.concatenate(net.apply({"params": params}, x), -1))
    full = np.asarray(apply(x))
    rows, cols = receptive_field(blocks)
    hc, wc = rows + 1, 2 * cols + 1
    for i in range(h):
        for j in range(w):
            r0, c0 = min(max(i - rows, 0), h - hc), min(max(j - cols, 0), w - wc)
            crop = np.asarray(apply(x[:, r0: r0 + hc, c0: c0 + wc]))
            np.testing.assert_allclose(crop[:, i - r0, j - c0], full[:, i, j], rtol=1e-5,
                                       atol=1e-5, err_msg=f"pixel {i},{j}")
    # one row and one column less is not enough: the window is the receptive field, not more
    short = np.asarray(apply(x[:, h - rows: h, :]))  # the last row without its top row
    assert not np.allclose(short[:, -1], full[:, -1], atol=1e-5)


@pytest.mark.parametrize("mean,log_scale", [(0.0, -3.0), (0.93, -6.5), (-1.0, 0.5)])
def test_the_mixture_likelihood_sums_to_one_over_the_256_values(mean, log_scale):
    logits = jnp.array([0.3, -1.0, 0.5])
    means = jnp.array([mean, -0.4, 0.6])
    log_scales = jnp.array([log_scale, -2.0, -4.0])
    p = jnp.exp(logistic_mixture_logp(LEVELS[:, None], logits, means, log_scales))
    assert abs(float(p.sum()) - 1.0) < 1e-5


def _histogram(values) -> np.ndarray:
    idx = np.asarray(jnp.round((values.reshape(-1) + 1.0) * 127.5)).astype(int)
    return np.bincount(idx, minlength=256) / idx.size


def test_sampling_a_fixed_distribution_reproduces_it():
    """With the network replaced by fixed mixture parameters, the pixels drawn follow that
    mixture: total variation to the exact 256-value distribution within the sampling error."""
    logits, means, log_scales = jnp.array([0.0, 1.0]), jnp.array([-0.5, 0.4]), jnp.array([-2.5, -3.0])
    fixed = lambda x: tuple(jnp.broadcast_to(a, x.shape[:3] + (2,))
                            for a in (logits, means, log_scales))
    x = sample_pixels(fixed, jax.random.key(0), (64, 8, 8, 1))
    assert np.all(np.asarray(quantize(x)) == np.asarray(x))  # on the 8-bit grid
    exact = np.asarray(jnp.exp(logistic_mixture_logp(LEVELS[:, None], logits, means, log_scales)))
    tv = 0.5 * np.abs(_histogram(x) - exact).sum()
    n = x.size  # 4096 draws: E[TV] ~ sum sqrt(p (1-p) / n) / 2 * sqrt(2/pi)
    bound = 3 * 0.5 * np.sum(np.sqrt(exact * (1 - exact) / n))
    assert tv < bound, (tv, bound)


def test_sampling_conditions_each_pixel_on_the_ones_drawn_before_it():
    """A 'network' whose mean at each pixel is its left neighbour (nearly deterministic): every
    row repeats its first pixel, which only holds if pixels are drawn left to right and each
    draw sees the image so far."""
    def copy_left(x):
        left = jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]
        first = jnp.arange(x.shape[2]) == 0
        mean = jnp.where(first[None, None, :, None], 0.5, left)
        return jnp.zeros(x.shape[:3] + (1,)), mean, jnp.full(x.shape[:3] + (1,), -9.0)

    x = np.asarray(sample_pixels(copy_left, jax.random.key(1), (3, 4, 6, 1)))
    assert np.allclose(x, x[:, :, :1], atol=1e-6)
    assert np.allclose(x[:, :, 0], quantize(0.5), atol=1e-6)


def test_the_family_trains_samples_and_reports_exact_bits_per_dim(configs, tmp_path, capsys):
    cfg = configs.family("autoregressive", tmp_path, steps=4)
    wd = str(tmp_path / "ar")
    from diffusion_jax.train.loop import train
    assert train(configs.experiment(cfg), wd)["status"] == "done"
    out = tmp_path / "s.npz"
    assert main(["sample", "--workdir", wd, "--num", "3", "--temperature", "0.8",
                 "--out", str(out)]) == 0
    with np.load(out) as f:
        images = f["images"]
    assert images.shape == (3, 8, 8, 1) and np.all(np.asarray(quantize(images)) == images)
    assert main(["likelihood", "--workdir", wd, "--num", "16", "--batch", "8"]) == 0
    res = json.loads((tmp_path / "ar" / "eval" / "likelihood.json").read_text())
    # uniformly random 8-bit pixels: no model independent of them does better than their
    # entropy, 8 bits/dim, in expectation (the 0.1: sampling error of 1024 pixels)
    assert res["bound"] == "discrete" and res["bits_per_dim"] > 8.0 - 0.1
    err = configs.cli_error(capsys, ["sample", "--workdir", wd, "--steps", "3"])
    assert "--steps is not an option of autoregressive models" in err and "--temperature" in err
