"""Training throughput: compile time, images/s, model FLOPs per step (the convolutions and matrix
products of forward + backward, counted from the program: ``bench/flops.py``), XLA's own FLOP
count, achieved GFLOP/s and its fraction of the machine's float32 matmul rate measured in the same
process (model-FLOPs utilisation), and per-device memory from XLA's memory analysis.

    python -m diffusion_jax bench-train --config experiments/fashion_mnist_ddpm.py
    python -m diffusion_jax bench-train --config experiments/cifar10_ddpmpp.py --memory-only
    python -m diffusion_jax bench-train --config ... --peer torch     # diffusers' UNet2DModel too

``--memory-only`` compiles the step for the experiment's mesh and batch without running it: with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` it estimates a v*-8 slice's per-device
memory from a CPU (XLA:CPU's buffer assignment; TPU layouts pad differently, so read it as an
estimate).
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from diffusion_jax.bench import peer_torch  # imports torch only when asked (peer_torch._import)
from diffusion_jax.bench.flops import count_flops
from diffusion_jax.experiment import Experiment, from_config
from diffusion_jax.methods.diffusion import Diffusion
from diffusion_jax.models import UNet
from diffusion_jax.parallel import batch_sharding, make_mesh

PEERS = ("torch",)


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeats):
        f(a).block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def _xla_flops(compiled) -> float:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", float("nan")))


def _batch(exp: Experiment, sharding=None):
    b = exp.train.batch_size
    batch = {"image": jnp.zeros((b,) + exp.shape), "label": jnp.zeros((b,), jnp.int32)}
    return batch if sharding is None else jax.device_put(batch, sharding)


def model_flops(exp: Experiment) -> int:
    """Convolution + matmul FLOPs of one train step as the model defines it: the step of the same
    experiment with remat off (recomputation is not model work), counted from its jaxpr."""
    cfg = exp.config
    if isinstance(cfg.get("model"), dict) and cfg["model"].get("remat", "none") != "none":
        cfg = dict(cfg, model=dict(cfg["model"], remat="none"))
        exp = from_config(ConfigDict(cfg))
    method = exp.method
    state = jax.eval_shape(method.init, jax.random.key(0))
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _batch(exp))
    return count_flops(method.train_step, state, batch, jax.random.key(1))


def _check_peer(exp: Experiment, peer: str | None):
    if peer is None:
        return None
    if peer not in PEERS:
        raise ValueError(f"unknown --peer {peer!r}; valid: {', '.join(PEERS)}")
    peer_torch._import()  # torch / diffusers missing: the install command, before compiling
    pixel_diffusion = type(exp.method) is Diffusion  # not a latent or consistency subclass
    if (not pixel_diffusion or not isinstance(exp.method.model, UNet)
            or len(exp.shape) != 3):
        what = type(exp.method.model).__name__ if pixel_diffusion else "network"
        raise ValueError("--peer torch compares U-Net diffusion training (diffusers' UNet2DModel);"
                         f" this experiment trains a {what} with method {exp.method.name!r}")
    return peer_torch


def bench_train(exp: Experiment, steps: int = 10, peer: str | None = None,
                memory_only: bool = False, rounds: int = 3) -> dict:
    """Compile the experiment's step on its mesh (FLOPs, per-device memory), then time ``steps``
    steps (with ``peer``, alternately with the peer's, ``rounds`` times; medians)."""
    peer_mod = _check_peer(exp, peer)
    mesh = make_mesh(exp.mesh.axes)
    method, b = exp.method, exp.train.batch_size
    compiled, out, sh, bsh = _compiled_step(exp, mesh)
    if memory_only:
        print(json.dumps(_rounded(out)))
        return out
    state = jax.jit(method.init, out_shardings=sh)(jax.random.key(0))
    batch, key = _batch(exp, bsh), jax.random.key(1)

    def ours(n):
        nonlocal state
        t0 = time.perf_counter()
        for _ in range(n):
            state, m = compiled(state, batch, key)
        jax.block_until_ready(m)
        return (time.perf_counter() - t0) / n

    ours(2)  # warm-up (first calls allocate; torch/oneDNN also builds its kernels)
    torch_peer = None
    if peer_mod is not None:
        torch_peer = peer_mod.TorchPeer(method.model.config, exp.data.image_size,
                                        exp.data.channels, b, lr=exp.optimizer.lr)
        torch_peer.time_steps(3)
    times, ttimes = [], []
    for _ in range(rounds if torch_peer else 1):  # alternate: both see the same machine load
        times.append(ours(steps))
        if torch_peer:
            ttimes.append(torch_peer.time_steps(steps))
    dt, peak, mflops = statistics.median(times), matmul_gflops(), out["model_gflop_per_step"] * 1e9
    out.update(step_s=dt, img_per_s=b / dt, achieved_gflops=mflops / dt / 1e9,
               matmul_gflops=peak, mfu=mflops / dt / 1e9 / peak,
               xla_achieved_gflops=out["xla_gflop_per_step"] / dt)
    if torch_peer:
        out.update(_peer_row(torch_peer, statistics.median(ttimes), b))
        out["speed_vs_peer"] = out["peer"]["step_s"] / dt
        print(side_by_side(out))
    print(json.dumps(_rounded(out)))
    return out


def _compiled_step(exp: Experiment, mesh):
    """``(compiled step, its figures, state shardings, batch sharding)``: compiled from shapes."""
    method = exp.method
    _, sh = method.abstract_state(mesh, exp.mesh.rules)
    bsh = batch_sharding(mesh)
    step = jax.jit(method.train_step, in_shardings=(sh, bsh, None), out_shardings=(sh, None),
                   donate_argnums=(0,))
    abstract = jax.eval_shape(method.init, jax.random.key(0))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, sh)
    babs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=bsh),
                        _batch(exp))
    t0 = time.perf_counter()
    compiled = step.lower(abstract, babs, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - t0
    # XLA's cost analysis of an SPMD program counts one device's share: scale to the whole step.
    xla_flops = _xla_flops(compiled) * mesh.size
    mem = compiled.memory_analysis()
    per_device_mb = None
    if mem is not None:  # bytes XLA allocates per device: arguments + outputs + temporaries
        per_device_mb = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                         - mem.alias_size_in_bytes + mem.temp_size_in_bytes) / 2**20
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(abstract.params))
    out = {"params_M": n_params / 1e6, "batch": exp.train.batch_size, "compile_s": compile_s,
           "model_gflop_per_step": model_flops(exp) / 1e9, "xla_gflop_per_step": xla_flops / 1e9,
           "devices": jax.device_count(), "mesh": dict(mesh.shape),
           "per_device_mb": per_device_mb}
    return compiled, out, sh, bsh


def _peer_row(torch_peer, tdt: float, b: int) -> dict:
    tpeak = torch_peer.matmul_gflops()
    return {"peer": {"name": "torch", "params_M": torch_peer.params / 1e6, "step_s": tdt,
                     "img_per_s": b / tdt,
                     "model_gflop_per_step": torch_peer.flops_per_step / 1e9,
                     "achieved_gflops": torch_peer.flops_per_step / tdt / 1e9,
                     "matmul_gflops": tpeak, "mfu": torch_peer.flops_per_step / tdt / 1e9 / tpeak,
                     "threads": torch_peer.torch.get_num_threads()}}


def _rounded(d):
    return {k: (round(v, 4) if isinstance(v, float) else _rounded(v) if isinstance(v, dict) else v)
            for k, v in d.items()}


def side_by_side(r: dict) -> str:
    p = r["peer"]
    rows = [("", "diffusion_jax", f"{p['name']} (diffusers UNet2DModel)"),
            ("parameters", f"{r['params_M']:.3f}M", f"{p['params_M']:.3f}M"),
            ("step (s, median)", f"{r['step_s']:.3f}", f"{p['step_s']:.3f}"),
            ("img/s", f"{r['img_per_s']:.1f}", f"{p['img_per_s']:.1f}"),
            ("model GFLOP/step (conv+matmul, fwd+bwd)", f"{r['model_gflop_per_step']:.4g}",
             f"{p['model_gflop_per_step']:.4g}"),
            ("achieved GFLOP/s", f"{r['achieved_gflops']:.3g}", f"{p['achieved_gflops']:.3g}"),
            ("matmul GFLOP/s (same run)", f"{r['matmul_gflops']:.0f}", f"{p['matmul_gflops']:.0f}"),
            ("utilisation (of matmul rate)", f"{100 * r['mfu']:.1f}%", f"{100 * p['mfu']:.1f}%")]
    lines = [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.insert(1, "|---|---|---|")
    lines.append(f"\nours / torch img/s: {r['speed_vs_peer']:.2f}x")
    return "\n".join(lines)
