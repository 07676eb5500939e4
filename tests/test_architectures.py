"""The DiT and the shared model machinery against ground truth: adaLN-Zero blocks start as the
identity, patches round-trip exactly, ``jax.nn.dot_product_attention`` equals an einsum
reference (self and cross), remat leaves gradients unchanged, a bf16 step stays within a stated
tolerance of the f32 step, and DiT kernels shard 1/8 per device under fsdp=8."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from diffusion_jax.experiment import ConfigError, from_config
from diffusion_jax.models.dit import DiT, DiTBlock, DiTConfig, patchify, unpatchify
from diffusion_jax.models.layers import AttnBlock, CrossAttnBlock, attention
from diffusion_jax.models.unet import UNet, UNetConfig


def _perturb(tree, scale=0.05, seed=0):
    leaves, td = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        td, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def test_adaln_zero_makes_every_block_the_identity_and_the_dit_output_zero():
    x = jax.random.normal(jax.random.key(0), (2, 16, 32))
    c = jax.random.normal(jax.random.key(1), (2, 32))
    block = DiTBlock(num_heads=4, mlp_ratio=4.0)
    params = block.init(jax.random.key(2), x, c)
    np.testing.assert_array_equal(block.apply(params, x, c), x)
    dit = DiT(DiTConfig(patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=3))
    img = jax.random.normal(jax.random.key(3), (2, 8, 8, 1))
    p = dit.init(jax.random.key(4), img, jnp.array([0.2, 0.8]), jnp.array([0, 2]))
    np.testing.assert_array_equal(dit.apply(p, img, jnp.array([0.2, 0.8]), jnp.array([0, 2])), 0.0)


def test_patchify_round_trips_exactly_and_is_row_major():
    x = jax.random.normal(jax.random.key(0), (3, 12, 8, 5))
    p = patchify(x, 4)
    assert p.shape == (3, 6, 4 * 4 * 5)
    np.testing.assert_array_equal(p[1, 1], x[1, 0:4, 4:8].reshape(-1))  # row 0, column 1
    np.testing.assert_array_equal(unpatchify(p, 4, 12, 8), x)


def _reference_attention(q, k, v):
    logits = jnp.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
    return jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("tq,tk", [(10, 10), (10, 7)])  # self, cross
def test_dot_product_attention_equals_an_einsum_reference(tq, tk):
    q = jax.random.normal(jax.random.key(0), (2, tq, 3, 8))
    k = jax.random.normal(jax.random.key(1), (2, tk, 3, 8))
    v = jax.random.normal(jax.random.key(2), (2, tk, 3, 8))
    np.testing.assert_allclose(attention(q, k, v), _reference_attention(q, k, v), atol=1e-5)


def test_the_unet_attention_blocks_equal_flax_einsum_attention():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 6))
    for block, args in ((AttnBlock(num_heads=2), (x,)), (CrossAttnBlock(num_heads=2), (x, ctx))):
        params = _perturb(block.init(jax.random.key(2), *args))  # zero out-projection moved
        ours = block.apply(params, *args)
        with pytest.MonkeyPatch.context() as mp:  # flax's own einsum attention, same weights
            import diffusion_jax.models.layers as layers
            mp.setattr(layers, "flax_attention_fn", nn.dot_product_attention)
            ref = type(block)(num_heads=2).apply(params, *args)
        np.testing.assert_allclose(ours, ref, atol=1e-5)
        assert float(jnp.abs(ours - args[0]).max()) > 1e-3  # the attention did something


_REMAT_CASES = {
    "unet_full": (lambda r: UNet(UNetConfig(channels=8, channel_mult=(1, 2), attn_resolutions=(4,),
                                            remat=r)), "full"),
    "dit_dots": (lambda r: DiT(DiTConfig(patch_size=2, hidden_size=32, depth=2, num_heads=4,
                                         remat=r)), "dots"),
}


# the U-Net's remat=full path also compiles and runs in test_bench_train_reports_model_flops_...
# (model FLOPs kept, XLA's raised); its gradient check compiles two U-Net backward passes (~50 s)
@pytest.mark.parametrize("case", [pytest.param("unet_full", marks=pytest.mark.slow), "dit_dots"])
def test_remat_gives_the_same_gradients(case):
    """U-Net with full remat, DiT with the dots policy (the two code paths of each)."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t = jnp.array([0.3, 0.7])
    for make, policy in (_REMAT_CASES[case],):
        base, remat = make("none"), make(policy)
        params = _perturb(nn.meta.unbox(base.init(jax.random.key(1), x, t)))
        loss = lambda m: (lambda p: jnp.sum(m.apply(p, x, t, train=True) ** 2))
        # jitted: eager op-by-op dispatch of a U-Net's backward pass took ~100 s of the suite
        g0 = jax.jit(jax.grad(loss(base)))(params)
        g1 = jax.jit(jax.grad(loss(remat)))(params)  # the same parameter tree: checkpoints agree
        for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(a).max() + 1))


BF16_LOSS_RTOL = 0.02  # bf16 keeps 8 mantissa bits (0.4% per rounding); a few layers deep: 2%


@pytest.mark.parametrize("arch", [pytest.param("unet", marks=pytest.mark.slow), "dit"])
def test_a_bf16_step_loss_is_within_tolerance_of_the_f32_step(configs, tmp_path, arch):
    losses = {}
    for dtype in ("float32", "bfloat16"):
        cfg = configs.tiny_image(tmp_path)
        if arch == "dit":
            cfg.model = {"name": "dit", "patch_size": 2, "hidden_size": 32, "depth": 2,
                         "num_heads": 4, "dtype": dtype}
        else:
            cfg.model.dtype = dtype
        m = from_config(cfg).method
        state = m.init(jax.random.key(0))
        state = state.replace(params=_perturb(state.params))  # a non-zero network output
        batch = {"image": jax.random.uniform(jax.random.key(1), (8, 8, 8, 1), minval=-1, maxval=1),
                 "label": jnp.zeros(8, jnp.int32)}
        new, metrics = jax.jit(m.train_step)(state, batch, jax.random.key(2))
        losses[dtype] = float(metrics["loss"])
        leaves = jax.tree_util.tree_leaves((new.params, new.opt_state))
        assert all(x.dtype in (jnp.float32, jnp.int32) for x in leaves)  # f32 params and moments
    assert abs(losses["bfloat16"] - losses["float32"]) <= BF16_LOSS_RTOL * losses["float32"]
    assert losses["bfloat16"] != losses["float32"]  # bf16 really computed something else


def test_dit_kernels_shard_one_eighth_per_device_under_fsdp8(configs, tmp_path):
    cfg = configs.tiny_image(tmp_path)
    cfg.mesh = {"data": 1, "fsdp": 8}
    cfg.model = {"name": "dit", "patch_size": 2, "hidden_size": 64, "depth": 2, "num_heads": 4}
    exp = from_config(cfg)
    mesh = Mesh(np.array(jax.devices()).reshape(1, 8), ("data", "fsdp"))
    abstract, shardings = exp.method.abstract_state(mesh, exp.mesh.rules)
    big = 0
    for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(abstract.params),
                                jax.tree_util.tree_leaves(shardings.params)):
        if leaf.size >= 64 * 64:
            per_device = np.prod(sh.shard_shape(leaf.shape))
            assert per_device * 8 == leaf.size, jax.tree_util.keystr(path)
            big += 1
    assert big >= 2 * 4  # qkv, proj, fc1, fc2 (and adaLN) of both blocks


def test_a_patch_size_that_does_not_divide_the_image_is_named(configs, tmp_path):
    cfg = configs.tiny_image(tmp_path)
    cfg.model = {"name": "dit", "patch_size": 3, "hidden_size": 32, "depth": 1, "num_heads": 4}
    with pytest.raises(ConfigError, match="model.patch_size=3 must divide data.image_size=8"):
        from_config(cfg)
