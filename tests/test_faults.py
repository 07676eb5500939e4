"""Faults injected on purpose, each against ground truth: an uninterrupted run of the same
experiment. kill -9 (also during an asynchronous save), SIGTERM, Ctrl-C anywhere (inside data
fetching too), damaged checkpoints, config changes on resume, two trainers on one workdir, a
diverging run, NaN weights, bad inputs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import diffusion_jax.train.loop as loop
from diffusion_jax.checkpoint import Checkpointer, CheckpointError, IncompatibleCheckpoint
from diffusion_jax.cli import main
from diffusion_jax.config import apply_override
from diffusion_jax.experiment import from_config
from diffusion_jax.parallel import make_mesh
from diffusion_jax.train.lock import WorkdirLocked
from diffusion_jax.train.logger import read_history

HERE = Path(__file__).resolve().parent
N = 12  # steps of the runs compared (checkpoints every 2)


def train(cfg, workdir, **kw):
    return loop.train(from_config(cfg), str(workdir), **kw)


def _losses(workdir) -> dict:
    return {r["step"]: r["loss"] for r in read_history(workdir, 10 ** 9) if "loss" in r}


def _saved_state(workdir, step=None):
    ck = Checkpointer(workdir)
    step = ck.latest_step() if step is None else step
    out = ck.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, out["state"]


def _assert_same_run(workdir, reference):
    ref_losses, ref_state = reference
    assert _losses(workdir) == ref_losses  # every step's loss, bit for bit
    step, state = _saved_state(workdir)
    assert step == N
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(ref_state)):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def reference(configs, tmp_path_factory):
    """The uninterrupted run: its losses at every step and its final state."""
    wd = tmp_path_factory.mktemp("reference") / "run"
    train(configs.toy(N), wd)
    return _losses(wd), _saved_state(wd)[1]


# --- kill -9, SIGTERM, two trainers, stale lock -------------------------------------------------

def _spawn(workdir, kill_after_save=None):
    args = [sys.executable, str(HERE / "fault_worker.py"), str(workdir), str(N)]
    env = dict(os.environ, FAULT_STEP_SLEEP="0.15")  # slow steps, so a signal lands mid-run
    return subprocess.Popen(args + ([str(kill_after_save)] if kill_after_save else []),
                            cwd=HERE.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _running(workdir, pid) -> bool:
    try:
        return json.loads((workdir / "status.json").read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


def _wait_for_step(proc, workdir, k, timeout=180):
    """Until this trainer (not an earlier one: its rows are rewritten on resume) logs step k."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the trainer ended (rc {proc.returncode}) before step {k}:\n"
                        + proc.stdout.read()[-3000:])
        if _running(workdir, proc.pid) and max(_losses(workdir), default=0) >= k:
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"step {k} not reached in {timeout} s")


def test_kill_9_three_times_and_sigterm_resume_bit_identically(configs, tmp_path, reference,
                                                               capsys):
    wd = tmp_path / "run"
    k1, k3, k4 = np.random.default_rng().integers([2, 9, 10], [5, 10, 12])
    # 1. kill -9 at a random step; while that trainer runs, a second one on the workdir refuses
    proc = _spawn(wd)
    _wait_for_step(proc, wd, 1)
    with pytest.raises(WorkdirLocked, match=f"in use by pid {proc.pid} on"):
        train(configs.toy(N), wd)
    _wait_for_step(proc, wd, k1)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    # 2. kill -9 while the asynchronous save of step 8 is being written
    proc = _spawn(wd, kill_after_save=8)
    assert proc.wait(timeout=180) == -signal.SIGKILL, proc.stdout.read()[-3000:]
    # 3. SIGTERM (preemption): the step is saved, exit code 143, status.json says so
    proc = _spawn(wd)
    _wait_for_step(proc, wd, k3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.stdout.read()[-3000:]
    status = json.loads((wd / "status.json").read_text())
    assert status["status"] == "preempted" and status["exit_code"] == 143
    assert status["step"] == Checkpointer(wd).latest_step() >= k3
    # 4. kill -9 at another random step
    proc = _spawn(wd)
    _wait_for_step(proc, wd, k4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    capsys.readouterr()
    out = train(configs.toy(N), wd)  # the killed trainers' lock is stale: taken over
    assert "taking over the stale lock" in capsys.readouterr().out
    assert out["status"] == "done" and json.loads((wd / "status.json").read_text())["exit_code"] == 0
    _assert_same_run(wd, reference)


def test_a_lock_of_a_live_process_refuses_and_a_dead_ones_is_taken_over(configs, tmp_path, capsys):
    import socket
    wd = tmp_path / "run"
    wd.mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (wd / "lock.json").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                  "started": "then"}))
        with pytest.raises(WorkdirLocked, match=f"pid {holder.pid} .* since then"):
            train(configs.toy(2), wd)
        assert not (wd / "checkpoints").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()
    assert train(configs.toy(2), wd)["status"] == "done"
    assert "taking over the stale lock" in capsys.readouterr().out
    assert not (wd / "lock.json").exists()  # released at the end


# --- Ctrl-C ------------------------------------------------------------------------------------

class _SigintAtRead:
    """A source that sends SIGINT from inside its ``n``-th read (grain reads in its own threads)."""

    def __init__(self, source, n):
        self.source, self.n, self.count = source, n, 0

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        self.count += 1
        if self.count == self.n:
            os.kill(os.getpid(), signal.SIGINT)
        return self.source[i]


@pytest.mark.parametrize("where", ["read", "read", "after_fetch", "after_fetch_twice"])
def test_ctrl_c_anywhere_resumes_bit_identically(configs, tmp_path, reference, monkeypatch, where):
    """A first Ctrl-C stops after the step and saves it; a second one interrupts at once, here
    just after a batch was fetched (the iterator is one batch ahead of the state), and the step
    saved is still the last completed one with its own iterator position."""
    wd, rng = tmp_path / "run", np.random.default_rng()
    get_source = loop.get_source
    if where == "read":
        at = int(rng.integers(8, 8 * (N - 2)))
        monkeypatch.setattr(loop, "get_source", lambda *a, **k: _SigintAtRead(get_source(*a, **k), at))
    else:
        at, calls, global_batch = int(rng.integers(2, N - 1)), [0], loop.global_batch

        def fetch_then_sigint(batch, sharding):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGINT)
                if where == "after_fetch_twice":
                    for _ in range(10000):  # let the first handler run before the second signal
                        pass
                    os.kill(os.getpid(), signal.SIGINT)
            return global_batch(batch, sharding)

        monkeypatch.setattr(loop, "global_batch", fetch_then_sigint)
    if where == "after_fetch_twice":
        with pytest.raises(KeyboardInterrupt):
            train(configs.toy(N), wd)
        assert Checkpointer(wd).latest_step() == at - 1
    else:
        out = train(configs.toy(N), wd)
        assert out["status"] == "interrupted" and out["step"] < N
    assert json.loads((wd / "status.json").read_text())["exit_code"] == 130
    monkeypatch.undo()
    assert train(configs.toy(N), wd)["status"] == "done"
    _assert_same_run(wd, reference)


# --- damaged checkpoints -----------------------------------------------------------------------

def _damage(step_dir: Path, how: str):
    state = step_dir / "state"
    files = sorted((f for f in state.rglob("*") if f.is_file() and f.parent.name == "d"),
                   key=lambda f: f.stat().st_size)
    # OCDBT's merge leaves a byte-identical copy of some data files in state/d/ and reads only
    # that one; which of two equal-sized files sorts last depends on the file system's listing
    # order, so damage to "the largest file" goes to every copy of it, the one read included.
    largest = files[-1].read_bytes()
    copies = [f for f in files if f.stat().st_size == len(largest) and f.read_bytes() == largest]
    if how == "truncated":  # a write cut short
        for f in files:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "file_deleted":  # every array file: which one a restore reads is orbax's choice
        for f in files:
            f.unlink()
    elif how == "bytes_flipped":  # one byte in the middle of the largest array file
        data = bytearray(largest)
        data[len(data) // 2] ^= 0xFF
        for f in copies:
            f.write_bytes(bytes(data))
    else:  # "content_swapped": arrays that decode fine but are not the ones saved
        shutil.rmtree(state)
        shutil.copytree(step_dir.parent / "2" / "state", state)


@pytest.mark.parametrize("how", ["truncated", "file_deleted", "bytes_flipped", "content_swapped"])
def test_a_damaged_checkpoint_is_quarantined_and_the_run_resumes_from_the_previous(
        configs, tmp_path, capsys, how):
    wd, ref = tmp_path / "run", tmp_path / "ref"
    train(configs.toy(4), wd)
    _damage(wd / "checkpoints" / "4", how)
    capsys.readouterr()
    out = train(configs.toy(6), wd)
    printed = capsys.readouterr().out
    assert "checkpoint step 4 is unreadable or damaged" in printed
    if how == "content_swapped":  # only the fingerprints can tell
        assert "fingerprint mismatch in ema_params/" in printed
    (moved,) = (wd / "quarantine").iterdir()
    assert moved.name.startswith("step_4_") and (moved / "REASON.txt").read_text().strip()
    assert out["step"] == 6 and sorted(Checkpointer(wd).manager.all_steps()) == [4, 6]
    # resumed from step 2: the same as a run stopped at 2 and resumed to 6
    train(configs.toy(2), ref)
    train(configs.toy(6), ref)
    assert _losses(wd) == _losses(ref)
    for step in (4, 6):  # the step that was damaged was saved again
        for a, b in zip(jax.tree_util.tree_leaves(_saved_state(wd, step)[1]),
                        jax.tree_util.tree_leaves(_saved_state(ref, step)[1])):
            np.testing.assert_array_equal(a, b)


def test_all_checkpoints_damaged_refuses_moves_nothing_and_restart_keeps_them(configs, tmp_path,
                                                                              capsys):
    wd = tmp_path / "run"
    train(configs.toy(4), wd)
    for step in (2, 4):
        _damage(wd / "checkpoints" / str(step), "truncated")
    before = sorted(str(p.relative_to(wd)) for p in wd.rglob("*"))
    cli = ["train", "--config", str(configs.root / "experiments" / "toy_gmm.py"),
           "--workdir", str(wd)] + [f"--config.{o}" for o in configs.toy_overrides(6)]
    err = configs.cli_error(capsys, cli)
    assert "no checkpoint in" in err and "nothing was changed" in err and "--restart" in err
    with pytest.raises(CheckpointError, match=r"step 4: .*; step 2: "):
        train(configs.toy(6), wd)
    after = sorted(str(p.relative_to(wd)) for p in wd.rglob("*"))
    assert after == before  # nothing deleted, moved or overwritten (metrics.jsonl included)
    assert main(cli + ["--restart"]) == 0
    (old,) = wd.glob("previous_*")
    assert sorted((old / "checkpoints").iterdir()) and (old / "metrics.jsonl").exists()
    assert Checkpointer(wd).latest_step() == 6


# --- config changes on resume ------------------------------------------------------------------

def test_a_state_changing_config_is_refused_before_compiling(configs, tmp_path, monkeypatch,
                                                             capsys):
    wd = tmp_path / "run"
    train(configs.toy(2), wd)
    cfg = configs.toy(4)
    apply_override(cfg, "optimizer.grad_accum=2")

    def no_compiling(*a, **k):
        raise AssertionError("compiled before refusing")

    monkeypatch.setattr(jax, "jit", no_compiling)
    with pytest.raises(IncompatibleCheckpoint, match="optimizer.grad_accum: checkpoint 1 vs config 2"):
        train(cfg, wd)
    monkeypatch.undo()
    # meaning, not shape: allowed, with a note
    cfg = configs.toy(4)
    apply_override(cfg, "train.batch_size=16")
    apply_override(cfg, "seed=3")
    capsys.readouterr()
    assert train(cfg, wd)["step"] == 4
    printed = capsys.readouterr().out
    assert "note: resuming with train.batch_size=16 (the checkpoint was written with 8)" in printed
    assert "note: resuming with seed=3" in printed


def test_a_differently_shaped_state_is_named_from_the_metadata(configs, tmp_path):
    wd = tmp_path / "run"
    train(configs.toy(2), wd)
    exp = from_config(configs.toy(2))
    abstract, _ = exp.method.abstract_state(make_mesh(exp.mesh.axes), exp.mesh.rules)
    wider = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(
        x.shape[:-1] + (x.shape[-1] + 1,), x.dtype) if x.ndim == 2 else x, abstract)
    with pytest.raises(IncompatibleCheckpoint,
                       match=r"\n  ema_params/Dense_0/kernel: checkpoint float32\[34, 16\] vs now "
                             r"float32\[34, 17\]"):
        Checkpointer(wd).restore(wider)


# --- divergence and NaN ------------------------------------------------------------------------

def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(configs, tmp_path, monkeypatch):
    cfg = configs.toy(20)
    train_step = from_config(cfg).method.__class__.train_step

    def diverges_at_7(self, state, batch, key):  # NaN loss from the 7th step on
        state, metrics = train_step(self, state, batch, key)
        return state, {**metrics, "loss": jax.numpy.where(state.step >= 7, jax.numpy.nan,
                                                          metrics["loss"])}

    monkeypatch.setattr(from_config(cfg).method.__class__, "train_step", diverges_at_7)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 7; stopping. The last good "
                                                 r"checkpoint \(step 6\)"):
        train(cfg, tmp_path / "run")
    step, state = _saved_state(tmp_path / "run")
    assert step == 6 and all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state))
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "nan" and status["exit_code"] == 1 and status["step"] == 6


def test_a_state_holding_nan_is_never_saved(configs, tmp_path):
    wd = tmp_path / "run"
    train(configs.toy(2), wd)
    ck = Checkpointer(wd)
    _, state = _saved_state(wd)
    exp = from_config(configs.toy(2))
    state = jax.tree_util.tree_map(np.asarray, state)
    bad = {**state, "ema_params": jax.tree_util.tree_map(lambda x: x * np.nan, state["ema_params"])}
    with pytest.raises(FloatingPointError, match="not saving step 3: ema_params/.* hold NaN/inf"):
        ck.save(3, bad, {}, exp.config)


def _sample_cli(configs, capsys, wd, out):
    return main(["sample", "--workdir", str(wd), "--num", "6", "--batch", "4", "--out", str(out)])


def test_sample_exits_nonzero_on_diverging_or_nan_weights(configs, tmp_path, capsys):
    wd = tmp_path / "run"
    train(configs.toy(2), wd)
    exp = from_config(configs.toy(2))
    _, state = _saved_state(wd)
    ck = Checkpointer(wd)
    # finite but huge weights (fingerprints match): the samples overflow -> exit 1, one line
    huge = {**state, "ema_params": jax.tree_util.tree_map(lambda x: x * 1e30, state["ema_params"])}
    ck.save(3, huge, {"next_index": 3}, exp.config)
    ck.wait()
    capsys.readouterr()
    assert main(["sample", "--workdir", str(wd), "--out", str(tmp_path / "s.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: samples 0..") and "hold NaN/inf" in err and "\n" not in err
    assert not (tmp_path / "s.npz").exists()
    # NaN weights written behind the checkpointer's back (no fingerprints): named as damage
    nan = {**state, "ema_params": jax.tree_util.tree_map(lambda x: x * np.nan, state["ema_params"])}
    ck.manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(nan),
                                               data=ocp.args.JsonSave({}),
                                               config=ocp.args.JsonSave(exp.config)))
    ck.wait()
    # sample falls back past it (as train does), naming it, to step 3 (whose samples overflow)
    capsys.readouterr()
    assert main(["sample", "--workdir", str(wd), "--out", str(tmp_path / "s.npz")]) == 1
    err = capsys.readouterr().err
    assert "warning: skipped checkpoint step 5" in err and "is damaged: ema_params/" in err
    assert "error: samples 0.." in err and "checkpoint step 3" in err


# --- bad inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--num", "0"], "--num must be >= 1, got 0"),
    (["--num", "-3"], "--num must be >= 1, got -3"),
    (["--batch", "0"], "--batch must be >= 1, got 0"),
])
def test_bad_sample_flags_get_one_line_before_anything_is_read(configs, tmp_path, capsys, flags,
                                                                message):
    err = configs.cli_error(capsys, ["sample", "--workdir", str(tmp_path / "nothing"), *flags])
    assert message in err
    assert not (tmp_path / "nothing").exists()


def test_data_that_does_not_match_the_experiment_is_refused_before_building(configs, tmp_path):
    cfg = configs.tiny_image(tmp_path)  # image_size 8
    big = tmp_path / "big.npz"
    np.savez(big, images=np.zeros((16, 32, 32, 1), np.uint8), labels=np.zeros(16, np.int64))
    apply_override(cfg, f"data.dataset=npz:{big}")
    with pytest.raises(ValueError, match=r"holds examples of shape \(32, 32, 1\) but the experiment "
                                         r"declares \(8, 8, 1\): set --config.data.image_size=32"):
        train(cfg, tmp_path / "run")
    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((0, 8, 8, 1), np.uint8))
    apply_override(cfg, f"data.dataset=npz:{empty}")
    with pytest.raises(ValueError, match="has no examples"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sample_in_chunks_streams_to_npy_and_matches_a_single_chunk(configs, tmp_path, capsys):
    wd = tmp_path / "run"
    train(configs.toy(2), wd)
    assert main(["sample", "--workdir", str(wd), "--num", "10", "--batch", "4",
                 "--out", str(tmp_path / "ten.npy")]) == 0
    assert main(["sample", "--workdir", str(wd), "--num", "4", "--batch", "4",
                 "--out", str(tmp_path / "four.npy")]) == 0
    ten, four = np.load(tmp_path / "ten.npy"), np.load(tmp_path / "four.npy")
    assert ten.shape == (10, 2) and np.all(np.isfinite(ten))
    np.testing.assert_array_equal(ten[:4], four)  # chunk i draws from fold_in(key, i)
    assert len({tuple(r) for r in ten.round(5)}) == 10  # the padded last chunk is not repeated
