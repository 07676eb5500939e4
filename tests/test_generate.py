"""generate.py: one sampling path for every family. The chunk loop (keys, padding, NaN check,
whole-or-nothing .npy), the option check against a family's ``sample_options``, labels and
slerp rows of the method defaults, and a PNG read back pixel for pixel. Fast: no training."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffusion_jax.generate import check_options, check_request, run_chunks
from diffusion_jax.methods.base import (MethodBase, SampleRequest, Sampling, SamplingEnv,
                                        changed_options, parse_labels, take)
from diffusion_jax.utils.images import save_grid, save_output, to_uint8


@dataclasses.dataclass(frozen=True, eq=False)
class Constant(MethodBase):
    """``sample`` returns the chunk's key-derived normal draws; labels, when given, are written
    into the first pixel, so a test can read which labels reached which row."""
    shape: tuple = (2, 2, 1)
    classes: int = 0
    name: str = "constant"
    sample_options = frozenset({"labels", "interpolate"})

    @property
    def num_classes(self) -> int:
        return self.classes

    def sample(self, params, key, n, cond=None):
        x = jax.random.normal(key, (n,) + self.shape) * 0.1
        if cond is not None:
            x = x.at[:, 0, 0, 0].set(cond["y"].astype(jnp.float32))
        return x

    def interpolate(self, params, key, rows, steps, test_images, labels):
        return jnp.repeat(jnp.linspace(-1, 1, steps)[None], rows, 0).reshape(-1, 1, 1, 1) * \
            jnp.ones((1,) + self.shape)


ENV = SamplingEnv(test_images=lambda n: np.zeros((n, 2, 2, 1), np.float32))


def test_chunks_use_one_key_per_chunk_and_pad_the_last():
    method = Constant()
    plan = method.sampling(SampleRequest(num=5, batch=2), ENV)
    assert (plan.n, plan.batch) == (5, 2)
    x = run_chunks(plan, None, seed=3)
    key = jax.random.key(3)
    expect = np.concatenate([np.asarray(method.sample(None, jax.random.fold_in(key, i), 2))
                             for i in range(3)])[:5]
    np.testing.assert_array_equal(x, expect)


def test_labels_reach_their_rows_in_every_chunk():
    plan = Constant(classes=3).sampling(SampleRequest(num=7, batch=3, labels="2,0"), ENV)
    x = run_chunks(plan, None, seed=0)
    np.testing.assert_array_equal(x[:, 0, 0, 0], [2, 0, 2, 0, 2, 0, 2])
    np.testing.assert_array_equal(plan.labels, [2, 0, 2, 0, 2, 0, 2])
    with pytest.raises(ValueError, match="--labels needs a class-conditional model"):
        Constant().sampling(SampleRequest(labels="1"), ENV)


def test_interpolation_rows_come_out_whole():
    plan = Constant().sampling(SampleRequest(num=3, interpolate=4), ENV)
    x = run_chunks(plan, None, seed=0)
    assert x.shape == (12, 2, 2, 1) and plan.nrow == 4
    np.testing.assert_allclose(x[:4, 0, 0, 0], np.linspace(-1, 1, 4), atol=1e-6)


def test_a_nan_chunk_stops_the_run_and_leaves_an_existing_output_untouched(tmp_path):
    out = tmp_path / "good.npy"
    np.save(out, np.arange(4.0))
    before = out.read_bytes()

    def draw(params, key, start):
        return np.full((2, 2, 2, 1), np.nan if start >= 2 else 0.0, np.float32)

    with pytest.raises(FloatingPointError, match=r"samples 2\.\.3 .* NaN"):
        run_chunks(Sampling(6, 2, draw), None, 0, str(out))
    assert out.read_bytes() == before
    assert (tmp_path / "good.partial.npy").exists()  # what was made, beside it


def test_a_finished_npy_replaces_the_old_one_whole(tmp_path):
    out = tmp_path / "s.npy"
    np.save(out, np.zeros(3))
    plan = Constant().sampling(SampleRequest(num=5, batch=2), ENV)
    x = run_chunks(plan, None, 0, str(out))
    np.testing.assert_array_equal(np.load(out), x)
    assert not (tmp_path / "s.partial.npy").exists()


def test_options_a_family_does_not_read_are_refused_with_its_own_named():
    exp = type("Exp", (), {"method": Constant()})()
    assert changed_options(SampleRequest(num=3, seed=2)) == []
    assert changed_options(SampleRequest(temperature=0.5, steps=3)) == ["steps", "temperature"]
    check_options(exp, SampleRequest(labels="all", num=4), "wd")
    with pytest.raises(ValueError, match=r"--temperature is not an option of constant models; "
                                         r"wd holds one \(its options: --num --batch --seed "
                                         r"--interpolate --labels --out\)"):
        check_options(exp, SampleRequest(temperature=0.5), "wd")


@pytest.mark.parametrize("req, message", [
    (SampleRequest(num=0), "--num must be >= 1"), (SampleRequest(batch=0), "--batch must be"),
    (SampleRequest(steps=0), "--steps must be >= 1"),
    (SampleRequest(strength=1.5, init_image="test"), r"--strength must be in \[0, 1\]"),
    (SampleRequest(mask="center"), "pass --init-image"),
    (SampleRequest(resample=2), "--resample is RePaint's"),
    (SampleRequest(interpolate=1), "at least 2 steps"),
    (SampleRequest(temperature=-1.0), "--temperature must be >= 0")])
def test_requests_that_cannot_run_are_refused(req, message):
    with pytest.raises(ValueError, match=message):
        check_request(req)


def test_label_specs():
    y, nrow = parse_labels("all", 3, 7)
    assert list(y) == [0, 0, 1, 1, 2, 2] and nrow == 2
    assert list(parse_labels("1,2", 3, 5)[0]) == [1, 2, 1, 2, 1]
    with pytest.raises(ValueError, match="--labels 'x'"):
        parse_labels("x", 3, 5)
    np.testing.assert_array_equal(take(np.arange(5), 4, 3, 5), [4, 4, 4])


def test_a_png_grid_holds_the_samples_pixels(tmp_path):
    images = np.linspace(-1, 1, 4 * 3 * 3).reshape(4, 3, 3, 1).astype(np.float32)
    path = tmp_path / "g.png"
    save_grid(images, path, nrow=2, pad=1, scale=1)
    grid = np.asarray(Image.open(path))
    want = to_uint8(images)[..., 0]
    for i in range(4):
        r, q = divmod(i, 2)
        top, left = 1 + r * 4, 1 + q * 4
        np.testing.assert_array_equal(grid[top: top + 3, left: left + 3], want[i])
    assert save_output(tmp_path / "o.png", images, inputs=images)["inputs"].endswith("o_input.png")
