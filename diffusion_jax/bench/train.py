"""Training throughput: compile time, images/s, XLA's FLOPs per step, achieved GFLOP/s, and the
machine's own float32 matmul rate measured in the same process (model-FLOPs utilisation).

    python -m diffusion_jax bench-train --config experiments/fashion_mnist_ddpm.py
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.experiment import Experiment
from diffusion_jax.parallel import batch_sharding, make_mesh


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeats):
        f(a).block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def _flops(compiled) -> float:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", float("nan")))


def bench_train(exp: Experiment, steps: int = 10) -> dict:
    mesh = make_mesh(exp.mesh.axes)
    method, shape, b = exp.method, exp.shape, exp.train.batch_size
    _, sh = method.abstract_state(mesh, exp.mesh.rules)
    state = jax.jit(method.init, out_shardings=sh)(jax.random.key(0))
    bsh = batch_sharding(mesh)
    batch = {"image": jax.device_put(jnp.zeros((b,) + shape), bsh),
             "label": jax.device_put(jnp.zeros((b,), jnp.int32), bsh)}
    step = jax.jit(method.train_step, in_shardings=(sh, bsh, None), out_shardings=(sh, None), donate_argnums=(0,))
    key = jax.random.key(1)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    # XLA's cost analysis of an SPMD program counts one device's share: scale to the whole step.
    flops = _flops(compiled) * mesh.size
    mem = compiled.memory_analysis()
    per_device_mb = None
    if mem is not None:  # bytes XLA allocates per device: arguments + outputs + temporaries
        per_device_mb = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                         - mem.alias_size_in_bytes + mem.temp_size_in_bytes) / 2**20
    state, m = compiled(state, batch, key)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, batch, key)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / steps
    peak = matmul_gflops()
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(method.sample_params(state)))
    out = {"params_M": n_params / 1e6, "batch": b, "compile_s": compile_s, "step_s": dt,
           "img_per_s": b / dt, "gflop_per_step": flops / 1e9, "achieved_gflops": flops / dt / 1e9,
           "matmul_gflops": peak, "utilization": flops / dt / 1e9 / peak,
           "devices": jax.device_count(), "mesh": dict(mesh.shape),
           "per_device_mb": per_device_mb}
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))
    return out
