"""The installed form: a wheel (not the checkout) in a fresh virtualenv, used from a directory
outside the checkout, as a Colab user does: packaged experiments by name, train, sample, and
notebook 01 in smoke mode.

The fresh venv gets the wheel alone (``--no-deps``) and reads its dependencies from the test
environment's site-packages through a ``.pth`` line (no network, seconds); the editable install
there is not picked up (a ``.pth``-added path is not scanned for ``.pth`` files), and the test
checks that ``diffusion_jax`` imports from the fresh venv. Run by ``.ci/run``."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd, cwd, env, timeout=600):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow  # a wheel build, a venv, a U-Net compile and a notebook: ~2 minutes
def test_wheel_in_a_fresh_venv_trains_samples_and_runs_notebook_01(tmp_path, configs):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
          "-w", str(dist), str(ROOT)], ROOT, os.environ)
    wheel = next(dist.glob("diffusion_jax-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, os.environ)
    py = venv / "bin" / "python"
    fresh_site = Path(_run([str(py), "-c", "import site; print(site.getsitepackages()[0])"],
                           tmp_path, os.environ).strip())
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(fresh_site),
          str(wheel)], tmp_path, os.environ)
    (fresh_site / "_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "XLA_FLAGS": configs.xla_flags, "PYTHONPATH": ""}
    where = _run([str(py), "-c", "import diffusion_jax; print(diffusion_jax.__file__)"], work, env)
    assert where.strip().startswith(str(fresh_site)), where
    listing = _run([str(py), "-m", "diffusion_jax", "experiments"], work, env)
    assert "fashion_mnist_ddpm" in listing and "toy_gmm" in listing
    _run([str(py), "-m", "diffusion_jax", "train", "--config", "fashion_mnist_ddpm",
          "--workdir", "W", "--config.train.steps=2", "--config.train.batch_size=8",
          "--config.model.channels=8", "--config.train.log_every=1",
          "--config.train.time_limit_minutes=0.0", "--config.optimizer.warmup_steps=1"], work, env)
    out = _run([str(py), "-m", "diffusion_jax", "sample", "--workdir", "W", "--steps", "2",
                "--num", "4", "--out", "s.png"], work, env)
    assert json.loads(out.strip().splitlines()[-1])["num"] == 4 and (work / "s.png").is_file()
    _run([str(py), "-c", (
        "import nbformat, nbclient, sys; nb = nbformat.read(sys.argv[1], as_version=4); "
        "nbclient.NotebookClient(nb, timeout=300, kernel_name='python3').execute()"),
        str(ROOT / "notebooks" / "01_quickstart.ipynb")], work, {**env, "SMOKE": "1"})
