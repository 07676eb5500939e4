"""Where a train step's time goes on XLA:CPU: a jax.profiler trace of a few compiled steps, each
executed XLA op (thunk) matched to its HLO instruction and put in a category (3x3 convolution
forward / input-gradient / weight-gradient, 1x1 convolution, matmul, attention, transpose/copy,
reduction, elementwise), summed per step. Prints the category table and the dearest ops.

    python scripts/profile_train_step.py --matched               # the speed issue's 3.9M U-Net
    DIFFUSION_JAX_CPU_FLAGS=0 python scripts/profile_train_step.py --matched   # XLA's default
    python scripts/profile_train_step.py --matched --peer torch  # beside diffusers' UNet2DModel

With ``--peer torch`` the same step of the matched diffusers U-Net (``bench-train --peer torch``'s)
is profiled with torch.profiler (each aten op's own CPU time) and both are printed in common
categories, seconds per step side by side.

The trace is also left in --trace-dir for TensorBoard's profile plugin or ui.perfetto.dev.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import diffusion_jax  # noqa: E402,F401 - before jax: the package's CPU settings
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffusion_jax.config import apply_override, load_config  # noqa: E402
from diffusion_jax.experiment import from_config  # noqa: E402

MATCHED = ["data.image_size=32", "model.channels=32", "model.channel_mult=(1,2,4)",
           "model.num_res_blocks=2", "model.attn_resolutions=(8,)", "model.num_heads=16",
           "train.batch_size=64"]

INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")


def hlo_index(hlo: str) -> tuple[dict, dict]:
    """instruction name -> (opcode, line); computation name -> its body lines."""
    instrs, comps, current = {}, collections.defaultdict(list), None
    for line in hlo.splitlines():
        m = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?.*\{\s*$", line)
        if m and "=" not in line.split("{")[0]:
            current = m.group(1)
            continue
        m = INSTR.match(line)
        if m:
            instrs[m.group(1)] = (m.group(3), line)
            if current:
                comps[current].append(line)
    return instrs, comps


def _conv_kind(line: str) -> str:
    """XLA:CPU canonicalises every convolution to ``b01f_01io->b01f`` with explicit transposes, so
    the kind is read from JAX's metadata (``transpose(`` marks the backward pass) and the shapes:
    a weight gradient's window spans the image and its output is kernel-sized."""
    window = re.search(r"window=\{size=(\d+)x(\d+)", line)
    win = (int(window.group(1)), int(window.group(2))) if window else (1, 1)
    out = re.search(r"=\s*\w+\[(\d+),(\d+),(\d+),(\d+)\]", line)
    backward = "transpose(" in line
    if out and win[0] > int(out.group(2)):  # inside library fusions the metadata may be gone
        k = f"{out.group(2)}x{out.group(3)}"
        return f"conv {k} weight-grad"
    k = f"{win[0]}x{win[1]}"
    return f"conv {k} input-grad" if backward else f"conv {k} forward"


def category(name: str, instrs: dict, comps: dict) -> str:
    op, line = instrs.get(name, ("?", ""))
    body = [line]
    called = re.search(r"calls=%?([\w.\-]+)", line)
    if called:
        body = comps.get(called.group(1), [line])
    text = "\n".join(body)
    for ln in body:
        if re.search(r"\sconvolution\(", ln):
            return _conv_kind(ln)
    if re.search(r"\sdot\(", text):
        return "matmul (dot)"
    if op in ("transpose", "copy") or name.startswith(("transpose_copy", "copy_bitcast")) or (
            re.search(r"\s(transpose|copy)\(", text)
            and not re.search(r"\s(add|multiply|exponential|divide)\(", text)):
        return "transpose / copy"
    if re.search(r"\sreduce(-window)?\(", text):
        return "reduction (norms, sums)"
    if op in ("custom-call",):
        return "custom call"
    return "elementwise / other"


# XLA:CPU's convolution thunks time only their dispatch (the work runs on the intra-op pool,
# untraced), so convolutions are compared in all directions together
COMMON = (("conv", "convolutions (forward and both gradients)"),
          ("untraced", "convolutions (forward and both gradients)"),
          ("matmul", "matmul (dense, attention)"),
          ("transpose", "transpose / copy"),
          ("reduction", "norms and reductions"),
          ("group norm", "norms and reductions"))


def common_category(cat: str) -> str:
    """XLA's and torch's categories on one scale (norms and their reductions together; the
    optimizer, elementwise work and framework overhead together)."""
    for prefix, name in COMMON:
        if cat.startswith(prefix):
            return name
    return "elementwise, optimizer, other"


def peer_table(jax_cats: dict, exp, step_s: float, steps: int, n_params: int) -> None:
    from diffusion_jax.bench.peer_torch import TorchPeer

    m = exp.method
    peer = TorchPeer(m.model.config, exp.data.image_size, exp.shape[-1], exp.train.batch_size)
    t0 = time.perf_counter()
    torch_cats = peer.profile(steps)
    torch_step = (time.perf_counter() - t0) / (steps + 1)
    rows = collections.defaultdict(lambda: [0.0, 0.0])
    for c, v in jax_cats.items():
        rows[common_category(c)][0] += v
    for c, v in torch_cats.items():
        rows[common_category(c)][1] += v
    print(f"\n# beside torch {peer.torch.__version__} (diffusers UNet2DModel, {peer.params:,} "
          f"parameters; ours {n_params:,}): step {step_s:.3f} s (JAX) vs {torch_step:.3f} s "
          "(torch) under the profilers\n")
    print("| category | JAX s/step | torch s/step | JAX / torch |\n|---|---|---|---|")
    for name, (a, b) in sorted(rows.items(), key=lambda kv: -max(kv[1])):
        ratio = f"{a / b:.2f}" if b > 0 else "-"
        print(f"| {name} | {a:.3f} | {b:.3f} | {ratio} |")
    tot = [sum(v[0] for v in rows.values()), sum(v[1] for v in rows.values())]
    print(f"| **total** | {tot[0]:.3f} | {tot[1]:.3f} | {tot[0] / tot[1]:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "experiments" / "fashion_mnist_ddpm.py"))
    ap.add_argument("--matched", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--trace-dir", default="/tmp/diffusion_jax_profile")
    ap.add_argument("--json", default="")
    ap.add_argument("--peer", choices=["torch"], default=None)
    args = ap.parse_args()
    cfg = load_config(args.config)
    for o in MATCHED if args.matched else []:
        apply_override(cfg, o)
    exp = from_config(cfg)
    m = exp.method
    b = exp.train.batch_size
    batch = {"image": jnp.zeros((b,) + exp.shape), "label": jnp.zeros((b,), jnp.int32)}
    state = jax.jit(m.init)(jax.random.key(0))
    key = jax.random.key(1)
    compiled = jax.jit(m.train_step, donate_argnums=(0,)).lower(state, batch, key).compile()
    instrs, comps = hlo_index(compiled.as_text())
    state, met = compiled(state, batch, key)
    jax.block_until_ready(met)
    t0 = time.perf_counter()
    with jax.profiler.trace(args.trace_dir, create_perfetto_trace=True):
        for _ in range(args.steps):
            state, met = compiled(state, batch, key)
            jax.block_until_ready(met)
    step_s = (time.perf_counter() - t0) / args.steps
    path = sorted(glob.glob(f"{args.trace_dir}/**/perfetto_trace.json.gz", recursive=True))[-1]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op = collections.Counter()
    executing = 0.0
    for e in events:
        if e.get("ph") == "X" and e.get("name") in instrs:
            per_op[e["name"]] += e.get("dur", 0.0) / 1e6 / args.steps  # s per step
        elif e.get("ph") == "X" and e.get("name") == "ThunkExecutor::Execute (wait for completion)":
            executing += e.get("dur", 0.0) / 1e6 / args.steps
    cats = collections.Counter()
    for name, s in per_op.items():
        cats[category(name, instrs, comps)] += s
    # XLA:CPU hands convolutions (and large dots) to Eigen / YNNPACK tasks on its intra-op pool;
    # their thunk events only cover the dispatch, so the program's wall time not covered by
    # traced ops is theirs.
    traced = sum(per_op.values())
    if executing > traced:
        cats["untraced: convolutions / library calls on the intra-op pool"] = executing - traced
    total = max(executing, traced)
    print(f"# {Path(args.config).name}{' (matched)' if args.matched else ''}: batch {b}, "
          f"step {step_s:.3f} s under the profiler, XLA program {total:.3f} s per step\n")
    print("| category | s/step | share |\n|---|---|---|")
    for c, s in cats.most_common():
        print(f"| {c} | {s:.3f} | {100 * s / total:.0f}% |")
    print("\n| top op | category | s/step |\n|---|---|---|")
    for name, s in per_op.most_common(args.top):
        print(f"| {name} | {category(name, instrs, comps)} | {s:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"step_s": step_s, "ops_s": total,
                                               "categories": dict(cats)}, indent=1))
    if args.peer:
        n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
        peer_table(dict(cats), exp, step_s, args.steps, n_params)


if __name__ == "__main__":
    main()
