"""End to end: a 2-step classifier, 2 training steps with training-time FD, `eval`,
`bench-samplers` and `likelihood`."""

import json
from pathlib import Path

import numpy as np
import pytest

from diffusion_jax.cli import main

def test_eval_cli_writes_table(tmp_path, configs, capsys):
    """On 64 random 8x8 images (a tiny U-Net and classifier compile in seconds; the Fashion-MNIST
    path of the same commands runs in the quick-start notebook)."""
    wd, clf = str(tmp_path / "fm"), str(tmp_path / "clf")
    configs.tiny_image(tmp_path)  # writes tiny.npz (64 8x8 images with labels)
    data = [f"--config.data.dataset=npz:{tmp_path / 'tiny.npz'}", "--config.data.image_size=8"]
    unet = ["--config.model.channels=8", "--config.model.channel_mult=(1, 2)",
            "--config.model.attn_resolutions=()", "--config.train.batch_size=8"]
    assert main(["train", "--config", str(configs.root / "experiments/fashion_mnist_classifier.py"),
                 "--workdir", clf, *data, "--config.model.channels=8",
                 "--config.model.feature_dim=8", "--config.train.steps=2",
                 "--config.train.batch_size=8"]) == 0
    assert main(["train", "--config", str(configs.root / "experiments/fashion_mnist_ddpm.py"),
                 "--workdir", wd, *data, *unet, "--config.train.steps=2",
                 "--config.sample.num=4", "--config.sample.num_steps=2",
                 "--config.train.fid_every=2", "--config.train.fid_num=32",
                 f"--config.train.fid_classifier={clf}"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "fm" / "metrics.jsonl").read_text().splitlines()]
    fd_rows = [r for r in rows if "fd" in r]  # training-time FD, logged with the metrics
    assert len(fd_rows) == 1 and fd_rows[0]["step"] == 2 and fd_rows[0]["fd"] > 0
    assert (tmp_path / "fm" / "fd.png").exists()
    assert main(["eval", "--workdir", wd, "--classifier", clf, "--samplers", "ddim",
                 "--nfe", "3", "--num", "64"]) == 0
    rows = json.loads((tmp_path / "fm" / "eval" / "eval.json").read_text())
    assert len(rows) == 1 and rows[0]["fd"] > 0 and "classifier" in rows[0]["extractor"]
    assert (tmp_path / "fm" / "eval" / "fd_vs_nfe.png").exists()
    assert "| ddim | default | 3 |" in (tmp_path / "fm" / "eval" / "eval.md").read_text()
    assert (tmp_path / "fm" / "eval" / "reference_features.npz").exists()
    # bench-samplers' pass on a trained model: calibrates the missing grid, then FD on the
    # default and the learned grid, and the NFE-20 figure beside them
    bench = tmp_path / "bench"
    assert main(["bench-samplers", "--workdir", wd, "--classifier", clf, "--samplers", "dpmpp_2m",
                 "--nfe", "3", "--num", "32", "--calib-num", "16", "--calib-iters", "2",
                 "--out", str(bench)]) == 0
    rows = json.loads((bench / "model" / "eval.json").read_text())
    assert [(r["grid"], r["nfe"]) for r in rows] == [("default", 3), ("learned", 3),
                                                      ("default", 20)]
    assert all(r["fd"] > 0 for r in rows) and (tmp_path / "fm" / "grids").is_dir()
    assert "pass --classifier" in configs.cli_error(
        capsys, ["bench-samplers", "--workdir", wd, "--nfe", "3"])
    # bits/dim on the test split: PF-ODE with dequantisation, mean and standard error.
    assert main(["likelihood", "--workdir", wd, "--num", "16", "--batch", "8", "--rtol", "1e-2"]) == 0
    res = json.loads((tmp_path / "fm" / "eval" / "likelihood.json").read_text())
    assert res["num"] == 16 and 0 < res["bits_per_dim"] < 20 and res["standard_error"] > 0
    assert len(res["nfe_per_batch"]) == 2 and min(res["nfe_per_batch"]) > 0
    assert "no checkpoints in" in configs.cli_error(
        capsys, ["eval", "--workdir", str(tmp_path / "empty"), "--classifier", clf])
    assert "needs a feature extractor" in configs.cli_error(capsys, ["eval", "--workdir", wd])
    assert "not a classifier" in configs.cli_error(
        capsys, ["eval", "--workdir", wd, "--classifier", wd])
    # a consistency model (no conditioning field): one row per --nfe, its evaluations
    ct = str(tmp_path / "ct")
    assert main(["train", "--config", str(configs.root / "experiments/fashion_mnist_ct.py"),
                 "--workdir", ct, *data, *unet, "--config.train.steps=2",
                 "--config.sample.num=4", "--config.train.time_limit_minutes=0"]) == 0
    assert main(["eval", "--workdir", ct, "--classifier", clf, "--nfe", "1", "--num", "32"]) == 0
    rows = json.loads((tmp_path / "ct" / "eval" / "eval.json").read_text())
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("consistency", 1)] and rows[0]["fd"] > 0


def test_optimize_grid_then_sample_with_the_learned_grid(tmp_path, configs, capsys):
    wd = str(tmp_path / "toy")
    assert main(["train", "--config", str(configs.root / "experiments/toy_gmm.py"), "--workdir", wd]
                + [f"--config.{o}" for o in configs.toy_overrides(2)]) == 0
    capsys.readouterr()
    assert main(["optimize-grid", "--workdir", wd, "--sampler", "dpmpp_2m", "--nfe", "4",
                 "--num", "16", "--iters", "3"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["num_steps"] == 3 and info["heldout_rmse"] >= 0 and info["process"] == "vp_linear"
    stored = json.loads((tmp_path / "toy" / "grids" / "dpmpp_2m_3steps.json").read_text())
    assert len(stored["ts"]) == 4
    out = tmp_path / "s.npz"
    assert main(["sample", "--workdir", wd, "--sampler", "dpmpp_2m", "--steps", "3", "--grid",
                 "learned", "--num", "4", "--out", str(out)]) == 0 and out.exists()
    err = configs.cli_error(capsys, ["sample", "--workdir", wd, "--sampler", "dpmpp_2m",
                                     "--steps", "4", "--grid", "learned"])
    assert "no learned grid for dpmpp_2m with 4 steps" in err and "--nfe 5" in err
    assert "--num must be >= 16, got 8" in configs.cli_error(
        capsys, ["optimize-grid", "--workdir", wd, "--sampler", "dpmpp_2m", "--nfe", "4",
                 "--num", "8"])
    # learned_pc: the solver's coefficients are stored with its grid and used by sample
    assert main(["optimize-grid", "--workdir", wd, "--sampler", "learned_pc", "--nfe", "4",
                 "--num", "16", "--iters", "3"]) == 0
    stored = json.loads((tmp_path / "toy" / "grids" / "learned_pc_3steps.json").read_text())
    assert len(stored["ts"]) == 4 and np.asarray(stored["coeffs"]["pred"]).shape == (3, 3)
    out = tmp_path / "pc.npz"
    assert main(["sample", "--workdir", wd, "--sampler", "learned_pc", "--steps", "3", "--grid",
                 "learned", "--num", "4", "--out", str(out)]) == 0
    with np.load(out) as f:
        assert all(np.all(np.isfinite(f[k])) for k in f.files)


@pytest.mark.slow
def test_bench_compress_rows_on_a_trained_model(tmp_path):
    """bench-compress: float32, int8 and step caching (with the plain sampler at the cached NFE
    beside it); at batch = num each setting compiles once for speed and FD."""
    from diffusion_jax.bench.compress import SETTINGS, bench_compress
    root = Path(__file__).resolve().parent.parent
    wd, clf = str(tmp_path / "fm"), str(tmp_path / "clf")
    assert main(["train", "--config", str(root / "experiments/fashion_mnist_classifier.py"),
                 "--workdir", clf, "--config.train.steps=2", "--config.train.batch_size=8"]) == 0
    assert main(["train", "--config", str(root / "experiments/fashion_mnist_ddpm.py"),
                 "--workdir", wd, "--config.train.steps=2", "--config.model.channels=8",
                 "--config.model.attn_resolutions=()", "--config.train.batch_size=8",
                 "--config.sample.num=4", "--config.sample.num_steps=2"]) == 0
    chosen = [s for s in SETTINGS if s[1] in ({}, {"quantize": "int8"}, {"cache_every": 2})]
    rows = bench_compress(wd, clf, tmp_path / "bc", num=32, nfe=3, sampler="ddim", batch=32,
                          rounds=1, settings=chosen)
    assert [(r["steps"], r["nfe"]) for r in rows] == [(2, 3), (2, 3), (2, 2), (1, 2)]
    assert rows[1]["weight_bytes"] < 0.3 * rows[0]["weight_bytes"]   # int8: ~1/4 plus scales
    assert rows[0]["nonzero"] <= rows[0]["stored_values"]
    assert all(r["fd"] > 0 and r["img_per_s"] > 0 for r in rows)
    table = (tmp_path / "bc" / "compress.md").read_text()
    assert "| float32 at NFE 2 (the cached NFE) | 1 |" in table
