"""img/s of compressed sampling across workdirs, alternated in one process (``bench-compress``
times the settings of one workdir; this puts other runs, e.g. distilled students, beside them).

    python scripts/bench_inference_speed.py --rounds 5 \\
        "float32=runs/fm" "int8=runs/fm:quantize=int8" "cached=runs/fm:cache_every=2" \\
        "student 1/2=runs/student_half" "float32 NFE 6=runs/fm:steps=5"

Each row: ``LABEL=WORKDIR[:field=value,...]`` with ``SampleRequest`` fields (``quantize``,
``prune``, ``low_rank``, ``cache_every``, ``steps``); the sampler is ``--sampler`` at ``--steps``.
``WORKDIR = random`` times ``--config``'s network at random weights (speed only: no training, no
data), e.g. the 35.7M CIFAR-10 U-Net:

    python scripts/bench_inference_speed.py --config experiments/cifar10_ddpmpp.py --rounds 3 \
        "float32=random" "bf16=random:quantize=bf16" "int8=random:quantize=int8"
"""

import argparse
import json

import jax

from diffusion_jax.bench.compress import _timer, alternated_speeds
from diffusion_jax.config import load_config
from diffusion_jax.experiment import from_config
from diffusion_jax.workdir import load


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rows", nargs="+")
    ap.add_argument("--sampler", default="unipc")
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--config", default=None, help="the experiment of rows at WORKDIR=random")
    args = ap.parse_args()
    timers, labels, random = [], [], None
    for row in args.rows:
        label, _, spec = row.partition("=")
        wd, _, opts = spec.partition(":")
        opts = dict(kv.split("=", 1) for kv in opts.split(",") if kv)
        opts = {k: _value(v) for k, v in opts.items()}
        steps = opts.pop("steps", args.steps)
        if wd == "random":
            if args.config is None:
                ap.error(f"row {row!r}: WORKDIR=random needs --config EXPERIMENT")
            if random is None:
                exp = from_config(load_config(args.config))
                random = exp, jax.jit(exp.method.init)(jax.random.key(0)).ema_params
            exp, params = random
            wd = None
        else:
            exp, params, _ = load(wd)
        once, nbytes, nonzero = _timer(exp.method, exp, wd, params, opts, args.sampler, steps,
                                       args.batch)
        timers.append(once)
        labels.append((label, nbytes, nonzero, steps))
    speeds = alternated_speeds(timers, args.batch, args.rounds)
    for (label, nbytes, nonzero, steps), v in zip(labels, speeds):
        print(json.dumps({"setting": label, "steps": steps, "weight_bytes": nbytes,
                          "stored_values": nonzero[0], "nonzero": nonzero[1],
                          "img_per_s": round(v, 1)}))


if __name__ == "__main__":
    main()
