"""Every notebook runs top to bottom with SMOKE=1 on CPU (the notebooks rot otherwise)."""

import glob
import json
import os

import pytest

NOTEBOOKS = sorted(glob.glob("notebooks/*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_outputs_are_stripped_and_api_is_public(path):
    nb = json.load(open(path))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None
            src = "".join(cell["source"])
            assert "._" not in src.replace("dj.__file__", ""), "private API in notebook"
    assert "colab.research.google.com" in "".join(nb["cells"][0]["source"])


# Notebook 04 trains a classifier and four families at 28x28 (5 min of compiling here); its parts
# run in tests/test_families.py (the families, dj.compare). Notebook 05 (47 s: the pretrained
# fixtures loaded and sampled) has its parts in tests/test_pretrained.py, notebook 06 (85 s: three
# samplers, a prompt-calibrated learned solver and an inversion on the tiny SD fixture) in
# tests/test_latent_pipelines.py. They run with -m slow (the default suite's 20-minute budget)
SLOW_NOTEBOOKS = ("notebooks/04_gans_vaes_flows_vs_diffusion.ipynb",
                  "notebooks/05_pretrained_models.ipynb",
                  "notebooks/06_text_to_image.ipynb")


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_NOTEBOOKS
                                  else p for p in NOTEBOOKS])
def test_notebook_executes_in_smoke_mode(path, tmp_path, configs):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    env_before = os.environ.get("SMOKE"), os.environ.get("XLA_FLAGS")
    os.environ["SMOKE"] = "1"
    # the kernel is a fresh process: one CPU device is enough, compiled as the suite compiles
    os.environ["XLA_FLAGS"] = configs.xla_flags
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": os.getcwd()}})
        client.execute()
    finally:
        for k, v in zip(("SMOKE", "XLA_FLAGS"), env_before):
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
