"""experiment.py: the registry, the typed sections, the family builders it dispatches to; and a
family added from outside the package with one registry line, run through train / sample /
eval / compare / likelihood by the CLI's functions. Fast: no subprocess."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from ml_collections import ConfigDict

from diffusion_jax import experiment
from diffusion_jax.cli import main
from diffusion_jax.config import load_config
from diffusion_jax.experiment import METHODS, ConfigError, from_config, register_method
from diffusion_jax.methods.base import MethodBase, SampleRequest
from diffusion_jax.settings import BuildContext, typed

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_every_family_in_the_registry_builds_from_its_experiment_file(configs):
    built, taught = set(), set()
    for path in sorted((configs.root / "experiments").glob("fashion_mnist_*.py")):
        cfg = load_config(str(path))
        if cfg.get("init_from") or any(isinstance(v, ConfigDict) and v.get("teacher")
                                       for v in cfg.values()):
            taught.add(cfg.method)  # built on a trained workdir (their own test files)
            continue
        if "latent" in cfg:
            continue
        exp = from_config(cfg)
        assert isinstance(exp.method, MethodBase) and exp.method_name in METHODS
        built.add(exp.method_name)
    assert built | taught == set(METHODS)


def test_each_family_declares_its_sections_and_another_familys_are_refused(configs):
    for name, family in METHODS.items():
        assert callable(family.build) and isinstance(family.SECTIONS, tuple), name
    cfg = configs.toy()
    cfg.gan = ConfigDict({"loss": "hinge"})
    with pytest.raises(ConfigError, match=r"gan.loss is a setting of the gan method"):
        from_config(cfg)


def test_typed_sections_name_unknown_and_missing_keys():
    @dataclasses.dataclass(frozen=True)
    class S:
        lr: float
        steps: int = 1

    assert typed(S, {"lr": 0.1}, "opt") == S(0.1, 1)
    with pytest.raises(ConfigError, match=r"unknown config key opt.stpes; did you mean opt.steps"):
        typed(S, {"lr": 0.1, "stpes": 2}, "opt")
    with pytest.raises(ConfigError, match=r"missing the required field opt.lr"):
        typed(S, {}, "opt")


def test_a_builder_reads_only_its_context(configs):
    """The context hands a builder its sections as plain data and an optimizer; the stored-run
    reader names the field when the workdir holds no checkpoint."""
    cfg = configs.toy()
    exp = from_config(cfg)
    ctx = BuildContext(cfg, exp.data, exp.optimizer, exp.train, exp.sample, experiment.stored_run)
    assert ctx.section("process") == {"name": "vp_linear"}
    assert ctx.section("nope", required=False) is None
    with pytest.raises(ConfigError, match="missing the required section 'nope'"):
        ctx.section("nope")
    with pytest.raises(ConfigError, match=r"latent.autoencoder='/no/such' holds no checkpoint"):
        ctx.stored("/no/such", "latent.autoencoder")


def test_processes_know_their_names(configs):
    from diffusion_jax.processes import PROCESSES, make_process
    for name in PROCESSES:
        assert make_process(name).name == name


@pytest.fixture
def outside_family(monkeypatch):
    """The outside family, registered with one line; removed again after the test."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    import toy_family
    monkeypatch.setitem(METHODS, "toy_gaussian", METHODS.get("toy_gaussian"))
    register_method("toy_gaussian", toy_family)  # the one registry line
    yield toy_family
    sys.modules.pop("toy_family", None)


def test_a_family_from_outside_the_package_runs_through_every_verb(outside_family, tmp_path,
                                                                   configs, capsys):
    wd, cfg = str(tmp_path / "toy"), str(FIXTURES / "toy_family_experiment.py")
    assert main(["train", "--config", cfg, "--workdir", wd]) == 0
    out = tmp_path / "s.npz"
    assert main(["sample", "--workdir", wd, "--num", "5", "--batch", "2", "--temperature", "0",
                 "--out", str(out)]) == 0
    with np.load(out) as f:
        x = f["images"]
    # temperature 0: every sample is the learned mean, which moved towards the data's mean
    assert x.shape == (5, 28, 28, 1) and np.allclose(x, x[:1])
    assert float(np.abs(x[0]).mean()) > 0.05
    err = configs.cli_error(capsys, ["sample", "--workdir", wd, "--sampler", "ddim"])
    assert "--sampler is not an option of toy_gaussian models" in err and "--temperature" in err
    assert main(["likelihood", "--workdir", wd, "--num", "16", "--batch", "8"]) == 0
    res = json.loads((tmp_path / "toy" / "eval" / "likelihood.json").read_text())
    assert res["method"] == "toy_gaussian" and res["bound"] == "exact"
    clf = _tiny_classifier(tmp_path, configs)
    assert main(["eval", "--workdir", wd, "--classifier", clf, "--num", "16"]) == 0
    rows = json.loads((tmp_path / "toy" / "eval" / "eval.json").read_text())
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("toy_gaussian", 1)]
    assert main(["compare", "--workdirs", wd, "--classifier", clf, "--num", "16",
                 "--bpd-num", "8", "--out", str(tmp_path / "cmp")]) == 0
    table = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert table[0]["method"] == "toy_gaussian" and table[0]["nfe_per_sample"] == 1


def _tiny_classifier(tmp_path, configs) -> str:
    wd = str(tmp_path / "clf")
    assert main(["train", "--config",
                 str(configs.root / "experiments/fashion_mnist_classifier.py"), "--workdir", wd,
                 "--config.model.channels=8", "--config.model.feature_dim=8",
                 "--config.train.steps=2", "--config.train.batch_size=8"]) == 0
    return wd


def test_the_method_defaults_describe_a_one_call_generator():
    base = MethodBase()
    assert base.generates and base.likelihood is None and base.nfe(SampleRequest()) == 1
    with pytest.raises(ValueError, match="no likelihood"):
        base.bits_per_dim(None, None, None)
    with pytest.raises(ValueError, match="--guidance"):
        base.eval_requests(["ddim"], [5], ["default"], 2.0)


def test_config_by_packaged_name_and_the_five_closest(capsys, configs):
    from diffusion_jax.config import describe_experiments, load_config, packaged_experiments
    by_name = load_config("fashion_mnist_ddpm")
    by_path = load_config(str(configs.root / "experiments" / "fashion_mnist_ddpm.py"))
    assert by_name.to_dict() == by_path.to_dict()
    assert load_config("toy_gmm.py").method == load_config("toy_gmm").method
    names = dict(describe_experiments())
    assert set(names) == set(packaged_experiments()) and "fashion_mnist_ddpm" in names
    assert all(names.values()), "every packaged experiment has a docstring"
    err = configs.cli_error(capsys, ["train", "--config", "fashion_mnst_ddpm", "--workdir", "W"])
    assert "closest: fashion_mnist_ddpm," in err and err.count(",") >= 4
