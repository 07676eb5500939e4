"""Compression for sampling (``diffusion_jax.compress``): quantised layers within the bound their
bit width implies, exact sparsity, the SVD's error, and the sample/eval path through them."""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.compress import (Compression, CompressedModel, lowrank_params, materialize,
                                    param_bytes, param_count, prune_params, quantize_params)
from diffusion_jax.compress.lowrank import LowRank
from diffusion_jax.compress.quantize import (QTensor, fake_quantize_rows, pack_int4,
                                             quantize_inputs, unpack_int4)

RNG = np.random.default_rng(0)
# float32 evaluation of the same sums in another order: a few ulps of the sum of |terms|
F32 = 1e-5


def _dense(features=24, fan_in=40, bias=True):
    layer = nn.Dense(features, use_bias=bias)
    x = jnp.asarray(RNG.normal(size=(6, fan_in)).astype(np.float32))
    params = layer.init(jax.random.key(0), x)["params"]
    params = {"kernel": jnp.asarray(RNG.normal(size=(fan_in, features)).astype(np.float32)),
              **({"bias": params["bias"]} if bias else {})}
    return layer, {"params": params}, x


@pytest.mark.parametrize("bits,mode", [(8, "int8"), (4, "int4")])
def test_weight_only_dense_error_is_within_half_a_step_per_channel(bits, mode):
    layer, v, x = _dense()
    q = quantize_params(v["params"], mode)
    k = q["kernel"]
    assert isinstance(k, QTensor) and k.q.dtype == (np.int8 if bits == 8 else np.uint8)
    w, w_hat = np.asarray(v["params"]["kernel"]), np.asarray(k.materialize())
    s = np.asarray(k.scale).reshape(-1)
    # rounding to nearest: every weight within half a step of its channel's grid
    assert np.all(np.abs(w - w_hat) <= s / 2 * (1 + 1e-6))
    stored = np.asarray(unpack_int4(k.q, w.size)) if bits == 4 else np.asarray(k.q)
    assert np.abs(stored).max() == 2 ** (bits - 1) - 1   # each channel's largest on the grid's end
    y = layer.apply(v, x)
    y_hat = CompressedModel(layer).apply({"params": q}, x)
    bound = (s / 2) * np.abs(np.asarray(x)).sum(1, keepdims=True)   # [B, out]
    err = np.abs(np.asarray(y - y_hat))
    assert np.all(err <= bound + F32 * np.abs(np.asarray(x)) @ np.abs(w)), err.max()
    assert err.max() > 0  # it did quantise


def test_weight_only_conv_error_is_within_the_receptive_fields_bound():
    conv = nn.Conv(16, (3, 3), padding="SAME")
    x = jnp.asarray(RNG.normal(size=(2, 8, 8, 6)).astype(np.float32))
    v = conv.init(jax.random.key(1), x)
    q = quantize_params(v["params"], "int4")
    y, y_hat = conv.apply(v, x), CompressedModel(conv).apply({"params": q}, x)
    s = np.asarray(q["kernel"].scale).reshape(-1)
    # sum of |x| over each output's 3x3x6 receptive field (zero padding as the layer's)
    field = jax.lax.conv_general_dilated(jnp.abs(x), jnp.ones((3, 3, 6, 1)), (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    bound = np.asarray(field) * s / 2
    assert np.all(np.abs(np.asarray(y - y_hat)) <= bound * (1 + 1e-5) + 1e-6)


def test_int8_activations_add_their_own_half_step_and_no_more():
    layer, v, x = _dense()
    q = quantize_params(v["params"], "int8")
    model = CompressedModel(layer, quantize_inputs)
    y, y_hat = layer.apply(v, x), model.apply({"params": q}, x)
    w_hat = np.abs(np.asarray(q["kernel"].materialize()))
    s_w = np.asarray(q["kernel"].scale).reshape(-1)
    s_x = np.abs(np.asarray(x)).max(1, keepdims=True) / 127
    bound = (s_x / 2) * w_hat.sum(0) + (s_w / 2) * np.abs(np.asarray(x)).sum(1, keepdims=True)
    err = np.abs(np.asarray(y - y_hat))
    assert np.all(err <= bound * (1 + 1e-5) + 1e-6)
    # the activations were rounded too: the output is not the weight-only one (the two errors
    # may cancel, so no ordering of their sizes is implied)
    assert np.abs(np.asarray(y_hat - CompressedModel(layer).apply({"params": q}, x))).max() > 0
    r = np.asarray(fake_quantize_rows(x))
    assert np.all(np.abs(r - np.asarray(x)) <= s_x / 2 * (1 + 1e-6))
    assert len(np.unique(np.round(r / s_x).astype(int))) <= 255


def test_int4_packing_round_trips_every_value():
    vals = np.tile(np.arange(-7, 8, dtype=np.int8), 4)[:-2]   # an even count, every value
    assert np.array_equal(np.asarray(unpack_int4(pack_int4(vals), vals.size)), vals)


def test_stored_bytes_are_a_quarter_and_an_eighth_plus_the_scales():
    params = {"a": {"kernel": RNG.normal(size=(3, 3, 16, 32)).astype(np.float32),
                    "bias": np.zeros(32, np.float32)},
              "b": {"kernel": RNG.normal(size=(64, 32)).astype(np.float32)}}
    kernels = 3 * 3 * 16 * 32 + 64 * 32
    scales, bias = 2 * 32 * 4, 32 * 4
    assert param_bytes(params) == 4 * kernels + bias
    assert param_bytes(quantize_params(params, "int8")) == kernels + scales + bias
    assert param_bytes(quantize_params(params, "int4")) == kernels // 2 + scales + bias
    half = quantize_params(params, "bf16")
    assert param_bytes(half) == 2 * kernels + bias
    w, w_hat = params["b"]["kernel"], np.asarray(materialize(half)["b"]["kernel"])
    assert np.all(np.abs(w_hat - w) <= np.abs(w) * 2.0 ** -8)   # 8 mantissa bits, rounded


def test_quantize_refusals_name_the_layer_or_the_supported_ones():
    odd = {"conv_out": {"kernel": np.ones((3, 3, 1, 1), np.float32)},
           "conv_in": {"kernel": np.ones((3, 3, 2, 4), np.float32)}}
    with pytest.raises(ValueError, match="layer conv_out/kernel has 9 weights"):
        quantize_params(odd, "int4")
    quantize_params(odd, "int8")  # int8 needs no packing
    with pytest.raises(ValueError, match="no kernel to quantize.*Conv, Dense"):
        quantize_params({"norm": {"scale": np.ones(4, np.float32)}}, "int8")
    with pytest.raises(ValueError, match="--quantize 'int2'.*bf16, int8, int4, int8-act"):
        Compression(quantize="int2")
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"--prune .*\(0, 1\)"):
            Compression(prune=bad)
        with pytest.raises(ValueError, match=r"--low-rank .*\(0, 1\)"):
            Compression(low_rank=bad)


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_pruning_zeroes_exactly_the_requested_fraction_smallest_first(sparsity):
    params = {"c": {"kernel": RNG.normal(size=(3, 3, 8, 16)).astype(np.float32),
                    "bias": RNG.normal(size=16).astype(np.float32)},
              "d": {"kernel": RNG.normal(size=(33, 7)).astype(np.float32)}}
    out = prune_params(params, sparsity)
    for name in ("c", "d"):
        w, p = params[name]["kernel"], out[name]["kernel"]
        zeros = np.count_nonzero(p == 0)
        assert zeros == round(sparsity * w.size)
        kept = p != 0
        assert np.all(p[kept] == w[kept])                       # survivors untouched
        assert np.abs(w[~kept]).max() <= np.abs(w[kept]).min()  # the smallest went
    assert np.array_equal(out["c"]["bias"], params["c"]["bias"])  # biases are not pruned
    total, nonzero = param_count(out)
    assert total == param_count(params)[0]
    assert nonzero == total - sum(round(sparsity * params[n]["kernel"].size) for n in "cd")


def test_low_rank_error_is_the_norm_of_the_discarded_singular_values():
    w = RNG.normal(size=(48, 40)).astype(np.float32)
    conv1 = RNG.normal(size=(1, 1, 32, 24)).astype(np.float32)
    conv3 = RNG.normal(size=(3, 3, 8, 8)).astype(np.float32)
    out = lowrank_params({"d": {"kernel": w}, "p": {"kernel": conv1}, "s": {"kernel": conv3}},
                         0.25)
    for name, full in (("d", w), ("p", conv1)):
        lr = out[name]["kernel"]
        assert isinstance(lr, LowRank)
        m2 = full.reshape(-1, full.shape[-1]).astype(np.float64)
        sv = np.linalg.svd(m2, compute_uv=False)
        r = lr.a.shape[1]
        assert r == int(np.ceil(0.25 * min(m2.shape)))
        err = np.linalg.norm(m2 - np.asarray(lr.materialize(), np.float64).reshape(m2.shape))
        np.testing.assert_allclose(err, np.sqrt(np.sum(sv[r:] ** 2)), rtol=1e-4)
    assert out["s"]["kernel"] is conv3            # a 3x3 convolution is kept whole
    # a kernel whose factors would be larger stays whole
    tall = RNG.normal(size=(64, 2)).astype(np.float32)
    assert lowrank_params({"k": {"kernel": tall}}, 0.9)["k"]["kernel"] is tall
    assert param_bytes(out) < param_bytes({"d": {"kernel": w}, "p": {"kernel": conv1},
                                           "s": {"kernel": conv3}})


def test_materialize_turns_every_packed_kernel_back():
    params = {"a": {"kernel": RNG.normal(size=(40, 24)).astype(np.float32)},
              "b": {"kernel": RNG.normal(size=(1, 1, 24, 24)).astype(np.float32)}}
    both = Compression(quantize="int8", low_rank=0.25).params(params)
    assert isinstance(both["a"]["kernel"], LowRank)  # factored first, the factors kept float
    dense = materialize(both)
    assert jax.tree_util.tree_structure(dense) == jax.tree_util.tree_structure(params)
    q = quantize_params(params, "int8")
    assert isinstance(q["a"]["kernel"], QTensor)


def _int_converts(jaxpr, in_loop=False, found=None):
    """``(inside a loop, outside any loop)`` counts of conversions from an integer array (the
    dequantisation of stored int8/int4 kernels), walking every nested jaxpr."""
    found = [0, 0] if found is None else found
    for eqn in jaxpr.eqns:
        if (eqn.primitive.name == "convert_element_type"
                and jnp.issubdtype(eqn.invars[0].aval.dtype, jnp.integer)
                and eqn.invars[0].aval.ndim >= 2):
            found[0 if in_loop else 1] += 1
        loop = in_loop or eqn.primitive.name in ("while", "scan")
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _int_converts(inner, loop, found)
    return found


def test_quantised_kernels_are_dequantised_once_outside_the_samplers_loop(configs, tmp_path):
    """The sampler's compiled program widens the int8 kernels once, before its loop: XLA does not
    hoist a size-increasing conversion out of a while loop, so inside the loop it would run at
    every network call (measured: int8 sampling ran at 0.93x float32's img/s that way)."""
    from diffusion_jax.methods.diffusion_sampling import make_sample_fn

    method = configs.experiment(configs.tiny_image(tmp_path)).method
    params = jax.jit(method.init)(jax.random.key(0)).params
    comp = Compression(quantize="int8")
    packed = comp.params(params)
    kernels = sum(isinstance(x, QTensor) for x in jax.tree_util.tree_leaves(
        packed, is_leaf=lambda x: isinstance(x, QTensor)))
    fn = make_sample_fn(comp.model(method.model), method.process, method.parameterization,
                        "ddim", 4, "logsnr")
    x = jnp.zeros((2,) + tuple(method.shape), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p, x, k: fn(p, x, k))(packed, x, jax.random.key(1))
    inside, outside = _int_converts(jaxpr.jaxpr)
    assert kernels > 4 and outside == kernels and inside == 0


@pytest.fixture(scope="module")
def tiny_wd(tmp_path_factory, configs):
    """A 30-step 8x8 diffusion run trained by the loop (long enough for its zero-initialised
    output layer to give outputs well away from zero)."""
    from diffusion_jax.train.loop import train
    tmp = tmp_path_factory.mktemp("compress")
    exp = configs.experiment(configs.tiny_image(tmp, steps=30))
    assert train(exp, str(tmp / "wd"))["status"] == "done"
    return str(tmp / "wd")


@pytest.mark.slow  # two U-Nets compiled and 40 steps (~65 s): -m slow
def test_a_smaller_student_learns_its_teachers_outputs(tiny_wd):
    """Knowledge distillation (``method="student"``): the state holds the teacher's (EMA)
    parameters as trained, the student has a quarter of its parameters, and on a fixed batch the
    student's output moves towards the teacher's at held-out noisy inputs."""
    from diffusion_jax.config import apply_override, load_config
    from diffusion_jax.experiment import from_config
    from diffusion_jax.workdir import load

    root = Path(tiny_wd).parent
    cfg = load_config(str(Path(__file__).resolve().parent.parent
                          / "experiments/fashion_mnist_student.py"))
    for o in (f"student.teacher='{tiny_wd}'", f"data.dataset='npz:{root / 'tiny.npz'}'",
              "data.image_size=8", "model.channels=4", "model.channel_mult=(1, 2)",
              "model.attn_resolutions=()", "optimizer.warmup_steps=1", "train.ema_start=0"):
        apply_override(cfg, o)
    method = from_config(cfg).method
    state = jax.jit(method.init)(jax.random.key(0))
    _, teacher, _ = load(tiny_wd)
    for a, b in zip(jax.tree_util.tree_leaves(state.teacher), jax.tree_util.tree_leaves(teacher)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    sizes = lambda p: sum(np.size(x) for x in jax.tree_util.tree_leaves(p))
    assert sizes(state.params) < 0.4 * sizes(state.teacher)   # 4 channels against 8
    x = jnp.asarray(RNG.normal(size=(16, 8, 8, 1)).astype(np.float32))
    t = jnp.asarray(RNG.uniform(0.05, 0.95, 16).astype(np.float32))
    gap = lambda p: float(jnp.mean(jnp.square(method.model.apply({"params": p}, x, t)
                                              - method.teacher_model.apply({"params": teacher}, x, t))))
    before = gap(state.params)
    batch = {"image": jnp.asarray(np.load(root / "tiny.npz")["images"][:16] / 127.5 - 1,
                                  jnp.float32)}
    step = jax.jit(method.train_step)
    losses = []
    for i in range(40):
        state, m = step(state, batch, jax.random.key(1))
        losses.append(float(m["loss"]))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert gap(state.params) < 0.5 * before


def test_sample_and_eval_paths_take_the_compressed_network(tiny_wd, tmp_path, configs, capsys):
    """A trained (tiny) workdir sampled through ``generate``: int8 lands nearer the float32
    samples than int4 (same seed and sampler), the CLI's flags reach it, and a family without a
    denoiser is refused in one line naming the ones that compress."""
    from diffusion_jax.cli import main
    from diffusion_jax.generate import SampleRequest, check_compression, generate

    wd = tiny_wd
    req = SampleRequest(num=8, sampler="ddim", steps=3)
    ref = np.asarray(generate(wd, req).images)
    err = {}
    for name, extra in (("int8", dict(quantize="int8")), ("int4", dict(quantize="int4"))):
        out = np.asarray(generate(wd, SampleRequest(num=8, sampler="ddim", steps=3, **extra)).images)
        assert out.shape == ref.shape and np.all(np.isfinite(out))
        err[name] = np.abs(out - ref).max()
    assert 0 < err["int8"] < err["int4"]
    out = tmp_path / "q.npz"
    assert main(["sample", "--workdir", wd, "--quantize", "int4", "--low-rank", "0.5",
                 "--cache-every", "2", "--num", "4", "--steps", "4", "--out", str(out)]) == 0
    assert np.load(out)["images"].shape[0] == 4
    method = configs.experiment(configs.tiny_image(tmp_path)).method
    assert method.nfe(SampleRequest(steps=4, cache_every=2)) == 3   # steps 0 and 2, the final
    gan = configs.experiment(configs.family("gan", tmp_path)).method
    with pytest.raises(ValueError, match="--quantize works on a diffusion model's denoiser"):
        check_compression(gan, SampleRequest(quantize="int8"), "runs/gan")
    assert "--prune 1.5: the sparsity must be in (0, 1)" in configs.cli_error(
        capsys, ["sample", "--workdir", wd, "--prune", "1.5"])


def _perturbed_unet():
    """A small U-Net with every parameter moved off its initial value (the zero-initialised
    output layer included), so the network's output is far from zero."""
    from diffusion_jax.models.unet import UNet, UNetConfig
    net = UNet(UNetConfig(channels=8, channel_mult=(1, 2), attn_resolutions=(4,)))
    x, t = jnp.ones((3, 8, 8, 1)), jnp.full((3,), 0.5)
    params = nn.unbox(net.init(jax.random.key(0), x, t))["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = tree.unflatten([a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    return (lambda x, t: net.apply({"params": params}, x, t)), (x, t)


def test_the_exported_network_equals_ours(tiny_wd, tmp_path, configs, capsys):
    """``export --format stablehlo`` (jax.export) always; ``--format onnx`` where jax2onnx and
    ONNX Runtime are installed (``.ci/run`` installs them): ONNX Runtime within 1e-4."""
    import importlib.util
    import json

    from diffusion_jax.cli import main
    from diffusion_jax.deploy import export_fn, export_network

    fn, args = _perturbed_unet()
    out = tmp_path / "net.stablehlo"
    res = export_fn(fn, args, out, "stablehlo")
    assert res["max_abs_diff"] <= 1e-6 and res["max_abs_output"] > 0.1
    loaded = jax.export.deserialize(out.read_bytes())   # read back from the file alone
    x = jnp.asarray(RNG.normal(size=(3, 8, 8, 1)).astype(np.float32))
    t = jnp.asarray([0.2, 0.5, 0.9], jnp.float32)
    # the same program compiled again: equal up to float32 reassociation
    np.testing.assert_allclose(np.asarray(loaded.call(x, t)), np.asarray(jax.jit(fn)(x, t)),
                               atol=1e-5)
    res = export_network(tiny_wd, tmp_path / "wd.stablehlo", "stablehlo", batch=2)
    assert res["inputs"] == ["float32[2, 8, 8, 1]", "float32[2]"] and res["max_abs_diff"] <= 1e-6
    gan = configs.experiment(configs.family("gan", tmp_path)).method
    with pytest.raises(ValueError, match="a gan has no denoiser network to export"):
        gan.network_fn({}, 1)
    assert "'png'" in configs.cli_error(
        capsys, ["export", "--workdir", tiny_wd, "--format", "png", "--out", "x"])
    if importlib.util.find_spec("jax2onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("jax2onnx / onnxruntime not installed (pip install onnx onnx-ir onnxruntime "
                    "&& pip install --no-deps jax2onnx)")
    res = export_fn(fn, args, tmp_path / "net.onnx", "onnx")
    assert res["max_abs_diff"] <= 1e-4 and res["max_abs_output"] > 0.1
    onnx_out = tmp_path / "wd.onnx"
    assert main(["export", "--workdir", tiny_wd, "--format", "onnx", "--batch", "4",
                 "--out", str(onnx_out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["max_abs_diff"] <= 1e-4 and onnx_out.is_file() and res["onnxruntime_img_per_s"] > 0


def test_compression_aware_training_sees_exactly_the_sampled_weights(configs):
    """QAT / pruning-aware training: the forward pass uses the kernels exactly as ``sample
    --quantize/--prune`` stores them, and the gradient passes straight through."""
    from diffusion_jax.compress.prune import fake_prune_kernel, prune_array
    from diffusion_jax.compress.quantize import fake_quantize_kernel, quantize_array
    from ml_collections import ConfigDict

    w = jnp.asarray(RNG.normal(size=(3, 3, 4, 6)).astype(np.float32))
    c = jnp.asarray(RNG.normal(size=w.shape).astype(np.float32))
    for bits in (8, 4):
        # w + (rounded - w): the rounded value up to one float32 rounding
        np.testing.assert_allclose(np.asarray(fake_quantize_kernel(w, bits)),
                                   np.asarray(quantize_array(w, bits).materialize()), atol=1e-6)
        g = jax.grad(lambda v: jnp.sum(fake_quantize_kernel(v, bits) * c))(w)
        np.testing.assert_array_equal(np.asarray(g), np.asarray(c))
    np.testing.assert_allclose(np.asarray(fake_prune_kernel(w, 0.8)), prune_array(w, 0.8),
                               atol=1e-6)
    g = jax.grad(lambda v: jnp.sum(fake_prune_kernel(v, 0.8) * c))(w)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(c))
    # one training step's loss under QAT int4 = the plain step's loss at the int4 weights
    plain = configs.experiment(configs.toy()).method
    cfg = configs.toy()
    cfg.compress = ConfigDict({"quantize": "int4"})
    qat = configs.experiment(cfg).method
    state = jax.jit(plain.init)(jax.random.key(0))
    moved = jax.tree_util.tree_map(  # off the zero-initialised output layer
        lambda a: a + 0.3 * jnp.asarray(RNG.normal(size=a.shape), a.dtype), state.params)
    state = state.replace(params=moved)
    batch = {"image": jnp.asarray(RNG.normal(size=(8, 2)).astype(np.float32))}
    rounded = materialize(quantize_params(state.params, "int4"))
    _, m_qat = jax.jit(qat.train_step)(state, batch, jax.random.key(3))
    _, m_ref = jax.jit(plain.train_step)(state.replace(params=rounded), batch, jax.random.key(3))
    np.testing.assert_allclose(float(m_qat["loss"]), float(m_ref["loss"]), rtol=1e-6)
    _, m_f32 = jax.jit(plain.train_step)(state, batch, jax.random.key(3))
    assert float(m_f32["loss"]) != float(m_qat["loss"])
    bad = configs.toy()
    bad.compress = ConfigDict({"prune": 1.5})
    with pytest.raises(Exception, match=r"compress: --prune 1.5: the sparsity must be in \(0, 1\)"):
        configs.experiment(bad)
