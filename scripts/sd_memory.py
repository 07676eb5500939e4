"""Per-device memory of Stable Diffusion 1.5 sampling on an 8-device mesh, from XLA's memory
analysis of the compiled program (nothing is run, no weights are needed: the U-Net's parameters
are abstract, laid out by the library's logical-axis rules).

The U-Net's 859.5M parameters shard over ``fsdp`` (``DEFAULT_RULES``: conv output channels,
MLP and attention widths), the batch over ``data`` x ``fsdp``; the program is a whole UniPC
run (9 steps + the final call, one ``lax.scan``) at batch 8 with classifier-free guidance (16
rows per network call). On a CPU host the 8 devices are simulated (XLA:CPU's buffer
assignment; TPU layouts pad differently, so read it as an estimate).

    python scripts/sd_memory.py     # meshes data=2 x fsdp=4, data=1 x fsdp=8, data=8 (replicated)
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import diffusion_jax as dj  # noqa: E402
from diffusion_jax.methods.state import param_shardings  # noqa: E402
from diffusion_jax.models.unet2d_condition import UNet2DCondition, UNet2DConditionConfig  # noqa: E402
from diffusion_jax.parallel import DEFAULT_RULES, make_mesh  # noqa: E402
from diffusion_jax.pretrained.precond import DiscreteSchedule, NetInfo, PretrainedDenoiser  # noqa: E402
from diffusion_jax.processes import DiscreteVP  # noqa: E402


def main() -> None:
    net = UNet2DCondition(UNet2DConditionConfig(cross_attention_dim=768, sample_size=64,
                                                attention_head_dim=8))
    process = DiscreteVP(betas="scaled_linear", beta_start=0.00085, beta_end=0.012)
    model = PretrainedDenoiser(net, DiscreteSchedule(process, "epsilon"), NetInfo())
    b, rows = 8, 16
    x = jnp.zeros((1, 64, 64, 4))
    boxed = jax.eval_shape(lambda k: model.init(k, x, jnp.ones((1,)), context=jnp.zeros((1, 77, 768))),
                           jax.random.key(0))["params"]
    n = sum(v.size for v in jax.tree_util.tree_leaves(nn.meta.unbox(boxed)))
    out = {}
    for axes in ((("data", 2), ("fsdp", 4)), (("data", 1), ("fsdp", 8)), (("data", 8),)):
        mesh = make_mesh(axes)
        sh = param_shardings(boxed, mesh, DEFAULT_RULES)
        abstract = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            nn.meta.unbox(boxed), sh)
        batch_axes = tuple(a for a, _ in axes)
        bsh = NamedSharding(mesh, PartitionSpec(batch_axes))

        def run(params, z_T, ctx, null):
            def guided(z, t):
                both = model.apply({"params": params}, jnp.concatenate([z, z]), t,
                                   context=jnp.concatenate([ctx, null]))
                return both[b:] + 7.5 * (both[:b] - both[b:])
            return dj.sample(guided, process, z_T, sampler="unipc", num_steps=9)

        args = (abstract, jax.ShapeDtypeStruct((b, 64, 64, 4), jnp.float32, sharding=bsh),
                jax.ShapeDtypeStruct((b, 77, 768), jnp.float32, sharding=bsh),
                jax.ShapeDtypeStruct((b, 77, 768), jnp.float32, sharding=bsh))
        t0 = time.perf_counter()
        compiled = jax.jit(run).lower(*args).compile()
        mem = compiled.memory_analysis()
        per_device = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                      - mem.alias_size_in_bytes + mem.temp_size_in_bytes) / 2**20
        key = " x ".join(f"{a}={k}" for a, k in axes)
        out[key] = {"per_device_MiB": round(per_device, 1),
                    "arguments_MiB": round(mem.argument_size_in_bytes / 2**20, 1),
                    "temporaries_MiB": round(mem.temp_size_in_bytes / 2**20, 1),
                    "compile_s": round(time.perf_counter() - t0, 1)}
        print(json.dumps({key: out[key]}), flush=True)
    print(json.dumps({"unet_params": int(n), "batch": b, "rows_per_call": rows,
                      "weights_MiB_unsharded": round(4 * n / 2**20, 1), **out}))


if __name__ == "__main__":
    main()
