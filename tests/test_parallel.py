"""Scale-out on 8 forced CPU devices: sharded == unsharded, FSDP really shards, restore across
meshes, two processes == one process, samples independent of the device count."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax.config import apply_override, load_config
from diffusion_jax.parallel import batch_sharding, make_mesh
from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.experiment import from_config

MESHES = {"1dev": ({"data": 1}, 1), "data8": ({"data": 8, "fsdp": 1}, 8),
          "data4_fsdp2": ({"data": 4, "fsdp": 2}, 8), "fsdp8": ({"data": 1, "fsdp": 8}, 8)}


def _cfg():
    # The toy MLP: compiles in seconds on 8 fake devices; its 64-wide layers shard over fsdp=8.
    cfg = load_config("experiments/toy_gmm.py")
    for o in ["model.hidden=64", "optimizer.warmup_steps=1", "train.ema_decay=0.9"]:
        apply_override(cfg, o)
    return cfg


def _run(mesh_axes, n_dev, steps=3, state=None):
    cfg = _cfg()
    mesh = make_mesh(mesh_axes, jax.devices()[:n_dev])
    exp = from_config(cfg)
    _, sh = exp.method.abstract_state(mesh, exp.mesh.rules)
    st = jax.jit(exp.method.init, out_shardings=sh)(jax.random.key(0))
    if state is not None:
        st = jax.device_put(state, sh)
    bsh = batch_sharding(mesh)
    step = jax.jit(exp.method.train_step, in_shardings=(sh, bsh, None), out_shardings=(sh, None))
    losses = []
    for i in range(steps):
        x = jax.random.normal(jax.random.key(10 + i), (16, 2))
        batch = jax.device_put({"image": x, "label": jnp.zeros((16,), jnp.int32)}, bsh)
        st, m = step(st, batch, jax.random.key(1))
        losses.append(float(m["loss"]))
    return st, losses, sh


@pytest.fixture(scope="module")
def reference():
    return _run(*MESHES["1dev"])


@pytest.mark.parametrize("name", ["data8", "data4_fsdp2", "fsdp8"])
def test_sharded_equals_unsharded(reference, name):
    ref_state, ref_losses, _ = reference
    st, losses, _ = _run(*MESHES[name])
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(st.params), jax.tree_util.tree_leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


def test_fsdp_really_shards_parameters():
    st, _, _ = _run(*MESHES["fsdp8"], steps=1)
    big = [p for p in jax.tree_util.tree_leaves(st.params) if p.size >= 512]  # 64x64 kernels
    assert big
    per_dev = sum(p.addressable_shards[0].data.nbytes for p in big)
    total = sum(p.nbytes for p in big)
    print(f"fsdp=8: {len(big)} parameters >= 512 values hold {per_dev} of {total} bytes per device")
    for p in big:
        assert p.addressable_shards[0].data.nbytes * 8 == p.nbytes, p.shape
    mu = [l for l in jax.tree_util.tree_leaves(st.opt_state) if getattr(l, "size", 0) >= 512]
    assert all(l.addressable_shards[0].data.nbytes * 8 == l.nbytes for l in mu)


def test_restore_onto_other_meshes_continues_identically(tmp_path):
    st8, _, sh8 = _run(*MESHES["data8"], steps=2)
    ck = Checkpointer(tmp_path)
    ck.save(2, st8, {"next_index": 2}, {})
    ck.wait()
    for name in ("1dev", "data4_fsdp2"):
        mesh_axes, n = MESHES[name]
        _, _, sh = _run(mesh_axes, n, steps=0)
        abstract = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), st8, sh)
        step, restored, data = Checkpointer(tmp_path).restore(abstract)
        assert step == 2 and data == {"next_index": 2}
        leaf = jax.tree_util.tree_leaves(restored.params)[0]
        assert leaf.sharding.mesh.devices.size == n
        a, la, _ = _run(mesh_axes, n, steps=1, state=restored)
        b, lb, _ = _run(*MESHES["data8"], steps=1, state=st8)
        np.testing.assert_allclose(la, lb, rtol=1e-5)


def test_samples_do_not_depend_on_the_device_count():
    g = dj.gmm.random_mixture(4, 3, 0.3)
    proc = dj.processes.VP.linear()
    den = g.denoiser(proc)
    outs = []
    for axes, n in (MESHES["1dev"], MESHES["data8"]):
        mesh = make_mesh(axes, jax.devices()[:n])
        sh = batch_sharding(mesh)
        fn = jax.jit(lambda k: dj.sample(den, proc, proc.prior_sample(k, (64, 4)), sampler="ddpm",
                                         num_steps=10, key=k), out_shardings=sh)
        outs.append(np.asarray(fn(jax.random.key(3))))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path, configs):
    worker = Path(__file__).with_name("multiprocess_worker.py")
    # one device per process (no device-count flag), compiled as the suite compiles
    env = dict(os.environ, XLA_FLAGS=configs.xla_flags)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(worker), str(tmp_path / "two"), "2", str(i),
                               str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    single = subprocess.run([sys.executable, str(worker), str(tmp_path / "one"), "1", "0", "0"],
                            env=env, capture_output=True, text=True, timeout=400)
    res = [json.loads(o.strip().splitlines()[-1]) for o in outs + [single.stdout]]
    assert res[0] == res[1], outs
    np.testing.assert_allclose(res[0]["losses"], res[2]["losses"], rtol=1e-5)
    np.testing.assert_allclose(res[0]["param_sum"], res[2]["param_sum"], rtol=1e-5)
    np.testing.assert_allclose(res[0]["samples"], res[2]["samples"], rtol=1e-4, atol=1e-5)
