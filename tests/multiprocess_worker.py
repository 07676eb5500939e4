"""Worker for test_parallel: ``python multiprocess_worker.py WORKDIR NUM_PROCESSES PROCESS_ID PORT``.
Trains the toy experiment for 3 steps on 8 devices in total (8 / NUM_PROCESSES each) and prints
its losses, parameter checksum and a few samples as JSON."""

import json
import sys

import jax

workdir, nproc, pid, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
jax.config.update("jax_num_cpu_devices", 8 // nproc)
if nproc > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                               process_id=pid)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import diffusion_jax as dj  # noqa: E402
from diffusion_jax.config import apply_override, load_config  # noqa: E402
from diffusion_jax.parallel import batch_sharding, make_mesh  # noqa: E402
from diffusion_jax.experiment import from_config  # noqa: E402
from diffusion_jax.train.loop import train  # noqa: E402

cfg = load_config("experiments/toy_gmm.py")
for o in ["train.steps=3", "train.log_every=1", "train.batch_size=64", "sample.num=64",
          "sample.num_steps=4", "model.hidden=32", "train.ckpt_every=3"]:
    apply_override(cfg, o)
out = train(from_config(cfg), workdir)
rows = [json.loads(l) for l in open(f"{workdir}/metrics.jsonl")] if jax.process_index() == 0 else []
losses = multihost_utils.broadcast_one_to_all(np.array([r["loss"] for r in rows] or [0.0] * 3))
params = out["state"].params
psum = float(sum(np.asarray(multihost_utils.process_allgather(p, tiled=True), np.float64).sum()
                 for p in jax.tree_util.tree_leaves(params)))

# Sharded sampling: the same seed gives the same samples on any number of devices / processes.
g = dj.gmm.random_mixture(4, 3, 0.3)
proc = dj.processes.VP.linear()
den = g.denoiser(proc)
sh = batch_sharding(make_mesh({"data": -1}))
fn = jax.jit(lambda k: dj.sample(den, proc, proc.prior_sample(k, (64, 4)), sampler="ddpm",
                                 num_steps=10, key=k), out_shardings=sh)
x = np.asarray(multihost_utils.process_allgather(fn(jax.random.key(3)), tiled=True))
print(json.dumps({"losses": [float(v) for v in losses], "param_sum": psum,
                  "samples": x[:8].round(5).tolist()}))
