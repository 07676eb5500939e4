"""The automatic XLA:CPU setting: applied before JAX starts, same numerics, and the user's own
XLA_FLAGS (or DIFFUSION_JAX_CPU_FLAGS=0) win."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_jax import cpu_flags

ROOT = Path(__file__).resolve().parent.parent
LOSSES = """
import json, os, diffusion_jax as dj
from diffusion_jax.config import apply_override, load_config
from diffusion_jax.experiment import from_config
import jax, jax.numpy as jnp
cfg = load_config(os.path.join(ROOT, "experiments", "fashion_mnist_ddpm.py"))
for o in ["data.image_size=8", "model.channels=8", "model.channel_mult=(1,2)",
          "model.attn_resolutions=()", "optimizer.warmup_steps=1"]:
    apply_override(cfg, o)
exp = from_config(cfg)
state = jax.jit(exp.method.init)(jax.random.key(0))
step = jax.jit(exp.method.train_step)
x = jax.random.uniform(jax.random.key(1), (8, 8, 8, 1), minval=-1, maxval=1)
losses = []
for i in range(3):
    state, m = step(state, {"image": x, "label": jnp.zeros((8,), jnp.int32)}, jax.random.key(2))
    losses.append(float(m["loss"]))
print(json.dumps({"flags": os.environ.get("XLA_FLAGS", ""), "applied": dj.cpu_flags.applied,
                  "losses": losses}))
"""


def _run(*env_changes):
    """One fresh process per environment, all at once (each compiles mostly on one core)."""
    procs = []
    for changes in env_changes:
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cpu_flags.ENV_SWITCH)}
        env.update(changes)
        procs.append(subprocess.Popen([sys.executable, "-c", f"ROOT = {str(ROOT)!r}\n" + LOSSES],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.slow  # three subprocesses, each compiling the demo step (~70 s): -m slow
@pytest.mark.skipif(not cpu_flags._jaxlib_knows(cpu_flags.FLAG), reason="jaxlib lacks the flag")
def test_cpu_setting_keeps_numerics_and_respects_the_user():
    auto, off, mine = _run({}, {cpu_flags.ENV_SWITCH: "0"},
                           {"XLA_FLAGS": f"--{cpu_flags.FLAG}=individual_dot"})
    assert auto["applied"] == f"--{cpu_flags.FLAG}=" and cpu_flags.FLAG in auto["flags"]
    assert off["applied"] is None and cpu_flags.FLAG not in off["flags"]
    assert mine["applied"] is None and mine["flags"] == f"--{cpu_flags.FLAG}=individual_dot"
    # float32 rounding: another convolution algorithm sums in another order (~1e-7 relative per
    # op), so a 3-step loss agrees to far better than 1e-4
    for other in (off, mine):
        for a, b in zip(auto["losses"], other["losses"]):
            assert abs(a - b) <= 1e-4 * abs(b), (auto["losses"], other["losses"])


def test_tests_run_with_the_setting():
    # conftest imports nothing of ours before setting XLA_FLAGS; the package adds the flag
    if cpu_flags._jaxlib_knows(cpu_flags.FLAG):
        assert cpu_flags.FLAG in os.environ["XLA_FLAGS"]
