"""A workdir's network written for deployment outside this library (``export --format``):

* ``stablehlo``: ``jax.export``'s serialized StableHLO (``.stablehlo``), which any JAX of the
  same or a newer release runs on any backend (``jax.export.deserialize(blob).call(x, t)``);
* ``onnx``: an ONNX graph through jax2onnx, for ONNX Runtime / OpenVINO. jax2onnx pins
  ``orbax-checkpoint<0.11.37`` while this library needs ``>=0.12``, so it is not a dependency:
  install it beside, without its pins (the README gives the commands).

The network is the one sampling calls, parameters baked in: ``(x_t, t[, y]) -> output`` (the
experiment's parameterization: eps, v, x0 or EDM's F). Either export is checked on random
inputs against the network here before the file is kept, and the maximum difference and both
runtimes' speed on this machine are reported.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import jax
import numpy as np

from diffusion_jax.utils.atomic import atomic_path
from diffusion_jax.workdir import load, read_experiment

FORMATS = ("stablehlo", "onnx")
ONNX_INSTALL = "pip install onnx onnx-ir onnxruntime && pip install --no-deps jax2onnx"


def _inputs(args, seed: int = 0) -> list[np.ndarray]:
    """Random inputs shaped like ``args`` (normal x, times inside the example's range)."""
    rng = np.random.default_rng(seed)
    out = []
    for a in args:
        a = np.asarray(a)
        if a.dtype.kind == "i":
            out.append(np.zeros_like(a))
        elif a.ndim == 1:
            out.append(np.full_like(a, a[0]) * rng.uniform(0.2, 1.0, a.shape).astype(a.dtype))
        else:
            out.append(rng.standard_normal(a.shape).astype(a.dtype))
    return out


def _per_second(call, batch: int, rounds: int = 3) -> float:
    call()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def _onnx_module():
    missing = [m for m in ("jax2onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"--format onnx needs jax2onnx and onnxruntime ({', '.join(missing)} "
                         f"missing): {ONNX_INSTALL}")
    from jax2onnx import to_onnx  # noqa: PLC0415 - optional, installed beside
    return to_onnx


def export_network(workdir, out, fmt: str = "stablehlo", batch: int = 1) -> dict:
    """Write the network of ``workdir`` to ``out`` in ``fmt``; returns what was written, the
    largest difference from this library's output and both runtimes' images per second (one
    network call on ``batch`` images, median of 3 after a warm-up)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)} (or omit it for "
                         "a pretrained run's own folder format)")
    method = read_experiment(workdir).method
    to_onnx = _onnx_module() if fmt == "onnx" else None
    _, params, step = load(workdir)
    fn, args = method.network_fn(params, batch)
    return {"out": str(out), "format": fmt, "checkpoint_step": step,
            **export_fn(fn, args, out, fmt, to_onnx)}


def export_fn(fn, args, out, fmt: str, to_onnx=None) -> dict:
    """``fn(*args)`` written to ``out`` as ``fmt``, checked against ``fn`` on random inputs."""
    batch = int(np.shape(args[0])[0])
    ours = jax.jit(fn)
    xs = _inputs(args)
    ref = np.asarray(ours(*xs))
    specs = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in args]
    if fmt == "stablehlo":
        blob = jax.export.export(ours)(*specs).serialize()
        loaded = jax.export.deserialize(blob)
        theirs = lambda *a: np.asarray(loaded.call(*a))
    else:
        import onnxruntime as ort  # noqa: PLC0415
        blob = (to_onnx or _onnx_module())(fn, specs, return_mode="proto").SerializeToString()
        sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        theirs = lambda *a: sess.run(None, dict(zip(names, a)))[0]
    diff = float(np.max(np.abs(theirs(*xs) - ref)))
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(blob)
    return {"bytes": len(blob),
            "inputs": [f"{s.dtype}{list(s.shape)}" for s in specs], "max_abs_diff": diff,
            "max_abs_output": float(np.max(np.abs(ref))),
            "ours_img_per_s": _per_second(lambda: np.asarray(ours(*xs)), batch),
            f"{'onnxruntime' if fmt == 'onnx' else 'stablehlo'}_img_per_s":
                _per_second(lambda: theirs(*xs), batch)}
