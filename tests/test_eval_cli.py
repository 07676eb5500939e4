"""End to end: train 2 steps on Fashion-MNIST, train a 2-step classifier, run `eval`."""

import json
import os

import pytest

from diffusion_jax.cli import main

FM = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


@pytest.mark.skipif(not os.path.exists(FM) and not os.environ.get("FASHION_MNIST_DIR"),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_eval_cli_writes_table(tmp_path):
    wd, clf = str(tmp_path / "fm"), str(tmp_path / "clf")
    assert main(["train", "--config", "experiments/fashion_mnist_ddpm.py", "--workdir", wd,
                 "--config.train.steps=2", "--config.model.channels=8",
                 "--config.model.attn_resolutions=()", "--config.train.batch_size=8",
                 "--config.sample.num=4", "--config.sample.num_steps=2"]) == 0
    assert main(["train-classifier", "--config", "experiments/fashion_mnist_classifier.py",
                 "--workdir", clf, "--config.train.steps=2", "--config.train.batch_size=8"]) == 0
    assert main(["eval", "--workdir", wd, "--classifier", clf, "--samplers", "ddim",
                 "--nfe", "3", "--num", "64"]) == 0
    rows = json.loads((tmp_path / "fm" / "eval" / "eval.json").read_text())
    assert len(rows) == 1 and rows[0]["fd"] > 0 and "classifier" in rows[0]["extractor"]
    assert (tmp_path / "fm" / "eval" / "fd_vs_nfe.png").exists()
    assert "| ddim | 3 |" in (tmp_path / "fm" / "eval" / "eval.md").read_text()
