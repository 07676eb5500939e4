"""``bench-compress``: one table of the sampling-time compressions on a trained diffusion
workdir. Per setting: the bytes of the sampling network's weights (what the compressed tree
stores), its nonzero values, img/s of the sampler at ``batch`` on this machine (one warm-up
chunk, then ``rounds`` timed chunks), and FD at the NFE budget (``eval``'s rows: ``num``
samples, the classifier's features). Each row's speed is the median of its rounds, the
settings timed in turn (alternated) after all are compiled, so every one sees the same machine
load.

    python -m diffusion_jax bench-compress --workdir runs/fm --classifier runs/clf --num 1000
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from diffusion_jax.compress import materialize, param_bytes, param_count
from diffusion_jax.eval.sample_eval import evaluate
from diffusion_jax.generate import SampleRequest, check_compression, sampling_env
from diffusion_jax.samplers import steps_for_budget, total_nfe
from diffusion_jax.utils.atomic import write_json, write_text
from diffusion_jax.workdir import load

SETTINGS = (
    ("float32", {}),
    ("bf16 weights", {"quantize": "bf16"}),
    ("int8 weights", {"quantize": "int8"}),
    ("int4 weights", {"quantize": "int4"}),
    ("int8 weights + activations (emulated)", {"quantize": "int8-act"}),
    ("pruned 50% (no fine-tune)", {"prune": 0.5}),
    ("pruned 80% (no fine-tune)", {"prune": 0.8}),
    ("low rank 1/4 (dense, 1x1)", {"low_rank": 0.25}),
    ("cached: network every 2nd step", {"cache_every": 2}),
)


def _timer(method, exp, workdir, params, opts: dict, sampler: str, steps: int, batch: int):
    """One setting compiled: ``(time_one_chunk, bytes, (stored values, nonzero weights))``: the
    values the compressed tree stores (an int4 byte is one) and the nonzero weights the network
    computes with (materialised)."""
    req = SampleRequest(num=batch, batch=batch, sampler=sampler, steps=steps, **opts)
    plan = method.sampling(req, sampling_env(exp, workdir))
    prepared = plan.prepare(params) if plan.prepare is not None else params
    key = jax.random.key(0)
    np.asarray(plan.draw(prepared, key, 0))  # compile

    def once(i: int) -> float:
        t0 = time.perf_counter()
        np.asarray(plan.draw(prepared, jax.random.fold_in(key, i + 1), 0))
        return time.perf_counter() - t0

    stored = param_count(prepared)[0]
    return once, param_bytes(prepared), (stored, param_count(jax.device_get(
        materialize(prepared)))[1])


def alternated_speeds(timers: list, batch: int, rounds: int) -> list[float]:
    """img/s of each timer, timed in turn ``rounds`` times (every setting sees the same machine
    load), medians."""
    times = [[] for _ in timers]
    for r in range(rounds):
        for i, once in enumerate(timers):
            times[i].append(once(r))
    return [batch / float(np.median(t)) for t in times]


def bench_compress(workdir, classifier: str, out: Path, num: int = 1000, nfe: int = 10,
                   sampler: str = "unipc", batch: int = 64, rounds: int = 5,
                   settings=SETTINGS, log=print) -> list[dict]:
    exp, params, step = load(workdir)
    method = exp.method
    steps = steps_for_budget(sampler, nfe)
    if steps is None or total_nfe(sampler, steps) != nfe:
        raise ValueError(f"--nfe {nfe} is not reachable with {sampler}")
    for _, opts in settings:
        check_compression(method, SampleRequest(**opts), workdir)
    rows, out = [], Path(out)
    plan = [(label, opts, steps, nfe) for label, opts in settings]
    cached = sorted({method.nfe(SampleRequest(sampler=sampler, steps=steps, **o))
                     for _, o in settings if o.get("cache_every")})
    # caching's honest baseline: the plain sampler at the NFE the cached run spends
    plan += [(f"float32 at NFE {c} (the cached NFE)", {}, steps_for_budget(sampler, c), c)
             for c in cached if steps_for_budget(sampler, c)]
    timed = [_timer(method, exp, workdir, params, opts, sampler, n_steps, batch)
             for _, opts, n_steps, _ in plan]
    speeds = alternated_speeds([t[0] for t in timed], batch, rounds)
    for (label, opts, n_steps, budget), (_, nbytes, nonzero), speed in zip(plan, timed, speeds):
        ev = evaluate(str(workdir), classifier, [sampler], [budget], num,
                      out=str(out / _slug(label)), compression=opts)[0]
        row = {"setting": label, **opts, "steps": n_steps, "weight_bytes": nbytes,
               "stored_values": nonzero[0], "nonzero": nonzero[1], "img_per_s": speed, "nfe": ev["nfe"], "fd": ev["fd"],
               "recall": ev.get("recall"), "checkpoint_step": step}
        rows.append(row)
        log(f"{label}: {nbytes / 1e6:.3f} MB, {speed:.1f} img/s, NFE {ev['nfe']}, FD {ev['fd']:.2f}")
    write_json(out / "compress.json", rows)
    write_text(out / "compress.md", _markdown(rows, sampler, steps, batch, num))
    return rows


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_")[:40]


def _markdown(rows, sampler, steps, batch, num) -> str:
    base = rows[0]
    lines = [f"{sampler}, {steps} steps unless the row says; img/s at batch {batch}; FD of {num} "
             "samples.", "",
             "| setting | steps | weight bytes | x float32 | stored values | nonzero weights | "
             "img/s | x float32 | NFE | FD | x float32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['steps']} | {r['weight_bytes']:,} | "
                     f"{r['weight_bytes'] / base['weight_bytes']:.3f} | {r['stored_values']:,} | "
                     f"{r['nonzero']:,} | "
                     f"{r['img_per_s']:.1f} | {r['img_per_s'] / base['img_per_s']:.2f} | "
                     f"{r['nfe']} | {r['fd']:.2f} | {r['fd'] / base['fd']:.3f} |")
    return "\n".join(lines) + "\n"
