"""A trainer in its own process, for test_faults: ``python fault_worker.py WORKDIR STEPS [K]``.
Trains the toy experiment (the same settings as ``conftest.toy_config``; with ``FAULT_FAMILY``
set, ``conftest.family_config``) and, with ``K``, kills
itself with SIGKILL right after the checkpoint save of step ``K`` has started (the asynchronous
write is then in flight). ``FAULT_STEP_SLEEP`` seconds are slept before each step. Exits with the
CLI's exit code otherwise."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402  (sets the same 8 host devices as the test process, before jax)

import time  # noqa: E402

import diffusion_jax.train.loop as loop  # noqa: E402
from diffusion_jax.checkpoint import Checkpointer  # noqa: E402
from diffusion_jax.experiment import from_config  # noqa: E402

workdir, steps = sys.argv[1], int(sys.argv[2])
if len(sys.argv) > 3:
    kill_at, save = int(sys.argv[3]), Checkpointer.save

    def save_then_die(self, step, *a, **k):
        save(self, step, *a, **k)
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    Checkpointer.save = save_then_die
if os.environ.get("FAULT_STEP_SLEEP"):  # slow steps, so that the test's signals land mid-run
    pause, global_batch = float(os.environ["FAULT_STEP_SLEEP"]), loop.global_batch
    loop.global_batch = lambda *a: (time.sleep(pause), global_batch(*a))[1]
family = os.environ.get("FAULT_FAMILY")  # a GAN / VAE / flow run instead of the toy one
cfg = (conftest.family_config(family, Path(workdir).parent, steps) if family
       else conftest.toy_config(steps))
out = loop.train(from_config(cfg), workdir)
sys.exit(loop.EXIT_CODES[out["status"]])
