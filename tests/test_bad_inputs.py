"""Bad inputs across every verb, run in-process through the CLI's entry function. Each case
must end with exit code 2 and exactly one ``error:`` line that names the offending flag or field
and its value, print no traceback, change nothing on disk (the workdirs' and the output folder's
file lists and the bytes of every existing file), and be refused before anything is compiled
(``jax.jit`` is patched to fail). Then the data-loss scenarios: interrupted and concurrent
``sample`` runs, a huge batch refused at once, and a swallowed Ctrl-C that still ends the run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from diffusion_jax.cli import main
from diffusion_jax.config import apply_override
from diffusion_jax.experiment import from_config
from diffusion_jax.train.loop import train

ROOT = Path(__file__).resolve().parent.parent
EXP = ROOT / "experiments"


def _train(cfg, wd: Path, *overrides) -> str:
    for o in overrides:
        apply_override(cfg, o)
    assert train(from_config(cfg), str(wd))["status"] == "done"
    return str(wd)


@pytest.fixture(scope="module")
def env(tmp_path_factory, configs):
    return build_env(tmp_path_factory.mktemp("bad"), configs)


def build_env(root: Path, configs) -> dict:
    """The workdirs (toy mixture, class-conditional 8x8 U-Net, GAN, classifier), an output
    folder holding good files, and broken inputs (config files, images, arrays), under ``root``
    (``scripts/fuzz_bad_inputs.py`` builds the same with the code it measures)."""
    data = root / "tiny.npz"
    cfg = configs.tiny_image(root)  # writes tiny.npz (64 8x8 images with labels)
    wds = {"toy": _train(configs.toy(2), root / "toy"),
           "cond": _train(cfg, root / "cond", "model.conditional=True", "data.num_classes=10"),
           "gan": _train(configs.family("gan", root, steps=2), root / "gan")}
    wds["clf"] = str(root / "clf")
    assert main(["train", "--config", str(EXP / "fashion_mnist_classifier.py"), "--workdir",
                 wds["clf"], f"--config.data.dataset=npz:{data}", "--config.data.image_size=8",
                 "--config.model.channels=8", "--config.model.feature_dim=8",
                 "--config.train.steps=2", "--config.train.batch_size=8"]) == 0
    out = root / "out"
    out.mkdir()
    np.save(out / "good.npy", np.arange(12.0))
    (out / "good.png").write_bytes(b"\x89PNG not really")
    (out / "eval").mkdir()
    (out / "eval" / "eval.json").write_text('[{"fd": 1.0}]')
    (out / "a_file").write_text("x")
    (out / "notes.txt").write_text("not an image")
    np.save(out / "nan.npy", np.full((1, 8, 8, 1), np.nan, np.float32))
    (out / "pickled.npz").write_bytes(b"\x80\x04\x95 pickle bytes")
    np.savez(out / "fewlabels.npz", images=np.zeros((4, 8, 8, 1), np.uint8),
             labels=np.zeros(3, np.int64))
    np.savez(out / "biglabels.npz", images=np.zeros((4, 8, 8, 1), np.uint8),
             labels=np.array([0, 1, 2, 12]))
    cfgs = root / "configs"
    cfgs.mkdir()
    (cfgs / "syntax.py").write_text("def get_config(:\n    pass\n")
    (cfgs / "noget.py").write_text("X = 1\n")
    (cfgs / "raises.py").write_text("def get_config():\n    raise RuntimeError('boom')\n")
    (cfgs / "dict.py").write_text("def get_config():\n    return {'a': 1}\n")
    (cfgs / "imports.py").write_text("import no_such_module_here\n")
    (cfgs / "exp.txt").write_text("not python")
    return {"root": root, "data": data, "out": out, "cfgs": cfgs, **wds}


def _snapshot(root: Path) -> dict:
    """Every file and folder under ``root`` with its bytes' digest (folders: None)."""
    snap = {}
    for p in sorted(root.rglob("*")):
        snap[str(p.relative_to(root))] = (hashlib.sha1(p.read_bytes()).hexdigest()
                                          if p.is_file() else None)
    return snap


def _fill(arg: str, env: dict) -> str:
    for k in ("toy", "cond", "gan", "clf"):
        arg = arg.replace("{" + k + "}", env[k])
    return (arg.replace("{out}", str(env["out"])).replace("{cfgs}", str(env["cfgs"]))
            .replace("{data}", str(env["data"])).replace("{exp}", str(EXP)))


TOY_CFG = "{exp}/toy_gmm.py"
IMG_CFG = "{exp}/fashion_mnist_ddpm.py"
IMG = ["--config.data.dataset=npz:{data}", "--config.data.image_size=8",
       "--config.model.attn_resolutions=()", "--config.model.channel_mult=(1, 2)"]


def _train_case(field_value: str, *names, cfg=TOY_CFG, extra=()):
    return (["train", "--config", cfg, "--workdir", "{out}/new_run", *extra,
             f"--config.{field_value}"], names or (field_value.split("=")[0],
                                                  field_value.split("=", 1)[1]))


CASES = [
    # -- train: the experiment's fields (type and range), checked when the config is read --
    _train_case("optimizer.lr=-1"), _train_case("optimizer.lr=0"), _train_case("optimizer.lr=nan"),
    _train_case("optimizer.lr=abc"), _train_case("optimizer.lr=inf"),
    _train_case("optimizer.b2=1.0"), _train_case("optimizer.b2=1.5"),
    _train_case("optimizer.b2=-0.1"), _train_case("optimizer.weight_decay=-1"),
    _train_case("optimizer.grad_clip=-1"), _train_case("optimizer.grad_accum=0"),
    _train_case("optimizer.warmup_steps=-10"), _train_case("optimizer.schedule=linear"),
    _train_case("train.steps=0"), _train_case("train.steps=abc"), _train_case("train.steps=1.5"),
    _train_case("train.batch_size=0"), _train_case("train.ema_decay=1.5"),
    _train_case("train.ema_decay=-0.1"), _train_case("train.ema_start=-1"),
    _train_case("train.log_every=0"), _train_case("train.ckpt_every=0"),
    _train_case("train.keep=0"), _train_case("train.time_limit_minutes=-1"),
    _train_case("train.sample_every=-1"), _train_case("train.fid_every=-5", cfg=IMG_CFG),
    _train_case("train.fid_num=1", cfg=IMG_CFG),
    _train_case("train.fid_every=10", "train.fid_every=10", cfg=IMG_CFG),
    _train_case("train.batch_size=1000000000", "train.batch_size=1000000000", cfg=IMG_CFG),
    _train_case("sample.sampler=dpmpp_9m"), _train_case("sample.grid=lgsnr"),
    _train_case("sample.num_steps=0"), _train_case("sample.num=0"),
    _train_case("data.random_flip=maybe"), _train_case("data.num_classes=-1"),
    _train_case("data.dataset=nope", "nope"), _train_case("data.dataset=npz:/no/such.npz",
                                                          "/no/such.npz"),
    _train_case("model.hidden=0"), _train_case("model.depth=0"),
    _train_case("model.time_scale=0"), _train_case("model.conditional=maybe"),
    _train_case("model.context_dim=4", "model.context_dim"),
    _train_case("model.name=resnet", "resnet"), _train_case("process.name=vq", "vq"),
    _train_case("parameterization.name=zz", "zz"), _train_case("loss.weighting=nope"),
    _train_case("loss.t_sampler=nope"), _train_case("seed=abc"),
    _train_case("train.stpes=1", "train.stpes", "train.steps"),
    _train_case("foo=1", "foo"), _train_case("optimizer=1", "optimizer"),
    _train_case("method=nope", "nope"),
    _train_case("data.dataset=npz:{out}/pickled.npz", "pickled.npz", "not an .npz"),
    _train_case("data.dataset=npz:{out}/fewlabels.npz", "labels", "4 integers"),
    _train_case("data.dataset=npz:{out}/biglabels.npz", "labels", "num_classes=10", cfg=IMG_CFG,
                extra=["--config.data.image_size=8", "--config.model.attn_resolutions=()",
                       "--config.model.channel_mult=(1, 2)"]),
    _train_case("model.channel_mult=()", cfg=IMG_CFG, extra=IMG[:3]),
    _train_case("model.channel_mult=(1, 0)", "model.channel_mult", cfg=IMG_CFG, extra=IMG[:3]),
    _train_case("model.channels=0", cfg=IMG_CFG, extra=IMG),
    _train_case("model.num_heads=0", cfg=IMG_CFG, extra=IMG),
    _train_case("model.num_heads=3", "model.num_heads=3", cfg=IMG_CFG,
                extra=[*IMG[:2], "--config.model.attn_resolutions=(4,)"]),
    _train_case("model.dtype=float8", cfg=IMG_CFG, extra=IMG),
    _train_case("model.dropout=1.5", cfg=IMG_CFG, extra=IMG),
    _train_case("model.cond_drop=2.0", cfg=IMG_CFG, extra=IMG),
    _train_case("model.num_res_blocks=0", cfg=IMG_CFG, extra=IMG),
    _train_case("model.attn_resolutions=(0,)", "model.attn_resolutions", cfg=IMG_CFG,
                extra=IMG[:2]),
    _train_case("data.image_size=30", "image_size 30", cfg=IMG_CFG, extra=IMG[:1]),
    _train_case("model.low_res_size=3", "model.low_res_size=3", cfg=IMG_CFG, extra=IMG),
    _train_case("gan.loss=hinge", "gan.loss", "gan"),
    # -- train: the command line and the files it names --
    (["train", "--config", "{cfgs}/missing.py", "--workdir", "{out}/r"], ("missing.py",)),
    (["train", "--config", "{cfgs}", "--workdir", "{out}/r"], ("--config", "folder")),
    (["train", "--config", "{cfgs}/exp.txt", "--workdir", "{out}/r"], ("exp.txt", "Python")),
    (["train", "--config", "{cfgs}/syntax.py", "--workdir", "{out}/r"], ("syntax.py:1",)),
    (["train", "--config", "{cfgs}/noget.py", "--workdir", "{out}/r"], ("noget.py",
                                                                        "get_config")),
    (["train", "--config", "{cfgs}/raises.py", "--workdir", "{out}/r"], ("raises.py:2", "boom")),
    (["train", "--config", "{cfgs}/dict.py", "--workdir", "{out}/r"], ("dict.py", "ConfigDict")),
    (["train", "--config", "{cfgs}/imports.py", "--workdir", "{out}/r"], ("imports.py:1",
                                                                          "no_such_module")),
    (["train", "--config", TOY_CFG], ("--workdir",)),
    (["train", "--config", TOY_CFG, "--workdir", "{out}/r", "--frobnicate"], ("--frobnicate",)),
    (["train", "--config", TOY_CFG, "--workdir", "{out}/a_file"], ("a_file",)),
    (["train", "--config", TOY_CFG, "--workdir", "{out}/a_file/run"], ("a_file",)),
    (["train", "--config", TOY_CFG, "--workdir", "{out}/r", "--config.train"], ("train",)),
    (["frobnicate"], ("frobnicate",)),
    # -- sample --
    (["sample", "--workdir", "{cond}", "--num", "0"], ("--num", "0")),
    (["sample", "--workdir", "{cond}", "--num", "abc"], ("--num", "abc")),
    (["sample", "--workdir", "{cond}", "--num", "-3"], ("--num", "-3")),
    (["sample", "--workdir", "{cond}", "--batch", "0"], ("--batch", "0")),
    (["sample", "--workdir", "{cond}", "--steps", "0"], ("--steps", "0")),
    (["sample", "--workdir", "{cond}", "--steps", "two"], ("--steps", "two")),
    (["sample", "--workdir", "{cond}", "--seed", "-1"], ("--seed", "-1")),
    (["sample", "--workdir", "{cond}", "--sampler", "dpmpp_9m", "--out", "{out}/good.npy"],
     ("--sampler", "dpmpp_9m")),
    (["sample", "--workdir", "{cond}", "--grid", "lgsnr", "--out", "{out}/good.npy"],
     ("--grid", "lgsnr")),
    (["sample", "--workdir", "{cond}", "--out", "{out}/s.txt"], ("--out", "s.txt")),
    (["sample", "--workdir", "{cond}", "--out", "{out}/s21"], ("--out", "s21")),
    (["sample", "--workdir", "{cond}", "--out", "{out}/eval"], ("--out", "eval", "folder")),
    (["sample", "--workdir", "{cond}", "--out", "{out}/a_file/s.png"], ("--out", "a_file")),
    (["sample", "--workdir", "{cond}", "--guidance", "nan"], ("--guidance", "nan")),
    (["sample", "--workdir", "{cond}", "--guidance", "abc"], ("--guidance", "abc")),
    (["sample", "--workdir", "{cond}", "--classifier-scale", "inf"], ("--classifier-scale",)),
    (["sample", "--workdir", "{toy}", "--guidance", "2", "--labels", "1"], ("--guidance",)),
    (["sample", "--workdir", "{toy}", "--labels", "1"], ("--labels",)),
    (["sample", "--workdir", "{cond}", "--labels", "99"], ("99",)),
    (["sample", "--workdir", "{cond}", "--labels", "x"], ("--labels", "x")),
    (["sample", "--workdir", "{cond}", "--labels", "1", "--strength", "1.5", "--init-image",
      "test"], ("--strength", "1.5")),
    (["sample", "--workdir", "{cond}", "--strength", "0.5"], ("--strength", "--init-image")),
    (["sample", "--workdir", "{cond}", "--mask", "center"], ("--mask", "--init-image")),
    (["sample", "--workdir", "{cond}", "--labels", "1", "--mask", "middle", "--init-image",
      "test"], ("mask", "middle")),
    (["sample", "--workdir", "{cond}", "--resample", "0"], ("--resample", "0")),
    (["sample", "--workdir", "{cond}", "--resample", "2"], ("--resample",)),
    (["sample", "--workdir", "{cond}", "--interpolate", "1"], ("--interpolate", "1")),
    (["sample", "--workdir", "{cond}", "--interpolate", "3"], ("--interpolate",)),
    (["sample", "--workdir", "{cond}", "--temperature", "-1"], ("--temperature", "-1")),
    (["sample", "--workdir", "{cond}", "--temperature", "0.5"], ("--temperature",)),
    (["sample", "--workdir", "{cond}", "--labels", "1", "--classifier", "{out}/nope"],
     ("nope",)),
    (["sample", "--workdir", "{cond}", "--labels", "1", "--init-image", "{out}/nope.png",
      "--strength", "0.5"], ("nope.png",)),
    (["sample", "--workdir", "{cond}", "--labels", "1", "--init-image", "{out}/notes.txt",
      "--strength", "0.5"], ("notes.txt",)),
    (["sample", "--workdir", "{cond}", "--labels", "1", "--init-image", "{out}/nan.npy",
      "--strength", "0.5"], ("nan.npy", "NaN")),
    (["sample", "--workdir", "{cond}", "--labels", "1", "--init-image", "test", "--mask",
      "{out}/notes.png"], ("notes.png",)),
    (["sample", "--workdir", "{cond}", "--labels", "1", "--low-res", "test"], ("--low-res",)),
    (["sample", "--workdir", "{cond}", "--config.train.steps=3"], ("--config.train.steps=3",)),
    (["sample", "--workdir", "{out}/nowhere"], ("nowhere",)),
    (["sample", "--workdir", "{out}/a_file"], ("a_file",)),
    (["sample", "--workdir", "{clf}"], ("clf", "classifier")),
    (["sample", "--workdir", "{gan}", "--sampler", "ddim"], ("--sampler", "gan")),
    (["sample", "--workdir", "{gan}", "--steps", "3"], ("--steps", "gan")),
    (["sample", "--workdir", "{gan}", "--guidance", "2"], ("--guidance", "gan")),
    (["sample", "--workdir", "{gan}", "--temperature", "1"], ("--temperature", "gan")),
    (["sample", "--workdir", "{gan}", "--labels", "1"], ("--labels",)),
    (["sample", "--workdir", "{gan}", "--mask", "center", "--init-image", "test"],
     ("--init-image", "gan")),
    (["sample", "--workdir", "{cond}", "--grid", "learned", "--labels", "1"], ("learned",)),
    (["sample", "--workdir", "{cond}", "--labels", "1", "--grid", "learned", "--strength", "0.3",
      "--init-image", "test"], ("--grid learned", "--strength")),
    (["sample", "--workdir", "{toy}", "--num", "1000000000000"], ("--num", "1000000000000")),
    (["sample", "--workdir", "{toy}", "--num", "100000000000", "--batch", "100000000000",
      "--out", "{out}/x.npy"], ("--batch", "100000000000")),
    (["sample"], ("--workdir",)),
    # -- eval --
    (["eval", "--workdir", "{cond}", "--classifier", "{clf}", "--num", "1"], ("--num", "1")),
    (["eval", "--workdir", "{cond}", "--classifier", "{clf}", "--num", "0"], ("--num", "0")),
    (["eval", "--workdir", "{cond}", "--classifier", "{clf}", "--nfe", "0"], ("--nfe", "0")),
    (["eval", "--workdir", "{cond}", "--classifier", "{clf}", "--nfe", "5,abc"], ("--nfe", "abc")),
    (["eval", "--workdir", "{cond}", "--classifier", "{clf}", "--nfe", ","], ("--nfe",)),
    (["eval", "--workdir", "{cond}", "--classifier", "{clf}", "--samplers", "ddim,dpm++"],
     ("--samplers", "dpm++")),
    (["eval", "--workdir", "{cond}", "--classifier", "{clf}", "--grids", "lgsnr"],
     ("--grids", "lgsnr")),
    (["eval", "--workdir", "{cond}"], ("--classifier",)),
    (["eval", "--workdir", "{toy}", "--classifier", "{clf}", "--guidance", "2"], ("--guidance",)),
    (["eval", "--workdir", "{cond}", "--classifier", "{out}/nope"], ("nope",)),
    (["eval", "--workdir", "{cond}", "--classifier", "{clf}", "--out", "{out}/a_file"],
     ("--out", "a_file")),
    (["eval", "--workdir", "{clf}", "--classifier", "{clf}"], ("classifier",)),
    (["eval", "--workdir", "{gan}", "--inception", "{out}/nope.npz"], ("nope.npz",)),
    (["eval", "--workdir", "{cond}", "--classifier", "{clf}", "--nfe", "1", "--samplers",
      "heun"], ("heun",)),
    (["eval", "--workdir", "{cond}", "--classifier", "{clf}", "--num", "1000000000000"],
     ("--num", "1000000000000")),
    (["eval", "--workdir", "{cond}", "--classifier", "{clf}", "--config.seed=1"],
     ("--config.seed=1",)),
    # -- likelihood --
    (["likelihood", "--workdir", "{cond}", "--rtol", "-1"], ("--rtol", "-1")),
    (["likelihood", "--workdir", "{cond}", "--rtol", "0"], ("--rtol", "0")),
    (["likelihood", "--workdir", "{cond}", "--atol", "nan"], ("--atol", "nan")),
    (["likelihood", "--workdir", "{cond}", "--num", "0"], ("--num", "0")),
    (["likelihood", "--workdir", "{cond}", "--batch", "0"], ("--batch", "0")),
    (["likelihood", "--workdir", "{cond}", "--trace", "hutch"], ("--trace", "hutch")),
    (["likelihood", "--workdir", "{cond}", "--seed", "-2"], ("--seed", "-2")),
    (["likelihood", "--workdir", "{gan}"], ("GAN", "no likelihood")),
    (["likelihood", "--workdir", "{clf}"], ("classifier",)),
    (["likelihood", "--workdir", "{cond}", "--out", "{out}/l.txt"], ("--out", "l.txt")),
    (["likelihood", "--workdir", "{cond}", "--out", "{out}/eval"], ("--out", "eval")),
    (["likelihood", "--workdir", "{toy}"], ("8-bit",)),
    # -- compare --
    (["compare", "--workdirs", ",", "--classifier", "{clf}"], ("--workdirs",)),
    (["compare", "--workdirs", "{gan}", "--classifier", "{clf}", "--num", "1"], ("--num", "1")),
    (["compare", "--workdirs", "{gan}", "--classifier", "{clf}", "--bpd-num", "-1"],
     ("--bpd-num", "-1")),
    (["compare", "--workdirs", "{gan}", "--classifier", "{clf}", "--labels", "a,b"],
     ("--labels",)),
    (["compare", "--workdirs", "{gan}", "--classifier", "{clf}", "--out", "{out}/a_file"],
     ("--out", "a_file")),
    (["compare", "--workdirs", "{gan},{clf}", "--classifier", "{clf}", "--out", "{out}/c"],
     ("clf", "classifier")),
    (["compare", "--workdirs", "{gan},{out}/nope", "--classifier", "{clf}", "--out", "{out}/c"],
     ("nope",)),
    (["compare", "--workdirs", "{gan},{toy}", "--classifier", "{clf}", "--out", "{out}/c"],
     ("shapes",)),
    (["compare", "--workdirs", "{gan}"], ("--classifier",)),
    # -- optimize-grid --
    (["optimize-grid", "--workdir", "{cond}", "--sampler", "ddim", "--nfe", "1"], ("--nfe", "1")),
    (["optimize-grid", "--workdir", "{cond}", "--sampler", "ddim", "--nfe", "x"], ("--nfe", "x")),
    (["optimize-grid", "--workdir", "{cond}", "--sampler", "heun", "--nfe", "6"],
     ("--nfe 6", "heun", "5 or 7")),
    (["optimize-grid", "--workdir", "{cond}", "--sampler", "dpmpp9", "--nfe", "6"],
     ("--sampler", "dpmpp9")),
    (["optimize-grid", "--workdir", "{cond}", "--sampler", "ddim", "--nfe", "6", "--num", "4"],
     ("--num", "4")),
    (["optimize-grid", "--workdir", "{cond}", "--sampler", "ddim", "--nfe", "6", "--iters", "0"],
     ("--iters", "0")),
    (["optimize-grid", "--workdir", "{gan}", "--sampler", "ddim", "--nfe", "6"], ("gan",)),
    (["optimize-grid", "--workdir", "{cond}", "--sampler", "ddpm", "--nfe", "6"], ("ddpm",
                                                                                    "stochastic")),
    # -- bench-samplers --
    (["bench-samplers", "--nfe", "0", "--out", "{out}/b"], ("--nfe", "0")),
    (["bench-samplers", "--nfe", "1", "--out", "{out}/b"], ("--nfe", "1")),
    (["bench-samplers", "--batch", "0", "--out", "{out}/b"], ("--batch", "0")),
    (["bench-samplers", "--samplers", "ddim,nope", "--out", "{out}/b"], ("--samplers", "nope")),
    (["bench-samplers", "--cases", "ring3d", "--out", "{out}/b"], ("--cases", "ring3d")),
    (["bench-samplers", "--out", "{out}/a_file"], ("--out", "a_file")),
    (["bench-samplers", "--workdir", "{cond}", "--out", "{out}/b"], ("--classifier",)),
    (["bench-samplers", "--goal-nfe", "abc", "--out", "{out}/b"], ("--goal-nfe", "abc")),
    (["bench-samplers", "--learned", "unipc,typo", "--out", "{out}/b"], ("--learned", "typo")),
    (["bench-samplers", "--workdir", "{cond}", "--classifier", "{clf}", "--num", "1",
      "--out", "{out}/b"], ("--num", "1")),
    # -- bench-train --
    (["bench-train", "--config", TOY_CFG, "--steps", "0"], ("--steps", "0")),
    (["bench-train", "--config", TOY_CFG, "--rounds", "0"], ("--rounds", "0")),
    (["bench-train", "--config", TOY_CFG, "--peer", "tf"], ("--peer", "tf")),
    (["bench-train", "--config", "{cfgs}/missing.py"], ("missing.py",)),
    (["bench-train", "--config", TOY_CFG, "--config.train.batch_size=0"],
     ("train.batch_size", "0")),
]


@pytest.mark.parametrize("argv, names", CASES, ids=[" ".join(c[0])[:90] for c in CASES])
def test_a_bad_input_gets_one_line_and_changes_nothing(env, argv, names, capsys, monkeypatch):
    argv = [_fill(a, env) for a in argv]
    names = [_fill(n, env) for n in names]
    watched = env["root"]
    before = _snapshot(watched)

    def no_compiling(*a, **k):
        raise AssertionError("compiled before refusing")

    monkeypatch.setattr(jax, "jit", no_compiling)
    capsys.readouterr()
    t0 = time.perf_counter()
    code = main(argv)
    secs = time.perf_counter() - t0
    monkeypatch.undo()
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2, (code, out, err)
    assert len(lines) == 1, err
    assert "Traceback" not in out + err
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert _snapshot(watched) == before, "a refused request changed files"
    assert secs < 30, f"refused after {secs:.0f} s"


# -- data-loss scenarios ------------------------------------------------------------------------

def _sample_cmd(wd, out, num=4000):
    return [sys.executable, "-m", "diffusion_jax", "sample", "--workdir", wd, "--num", str(num),
            "--batch", "8", "--labels", "1", "--steps", "200", "--out", str(out)]


def _child_env(configs):
    return {**os.environ, "XLA_FLAGS": configs.xla_flags, "PYTHONPATH": str(ROOT)}


# six subprocess samplings signalled at set delays: timing-sensitive on a loaded 2-core machine
# (two test workers), where it failed 2 of the last 3 full runs: -m slow
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_sample_keeps_the_previous_output(env, configs, tmp_path, sig, code):
    """Signals at three different moments (start-up, compiling, sampling): exit 128 + signal,
    one line, the previous output's bytes untouched; at most the partial file stays."""
    out = tmp_path / "good.npy"
    np.save(out, np.arange(5.0))
    before = out.read_bytes()
    for delay in (0.5, 3.0, 12.0):
        proc = subprocess.Popen(_sample_cmd(env["cond"], out), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_child_env(configs))
        time.sleep(delay)
        proc.send_signal(sig)
        t0 = time.time()
        _, err = proc.communicate(timeout=60)
        # seconds, not minutes: the 3 s grace plus a loaded machine's exit (two test workers)
        assert time.time() - t0 < 30, f"honoured after {time.time() - t0:.0f} s"
        assert proc.returncode == code, (delay, proc.returncode, err[-800:])
        assert "Traceback" not in err and "Exception ignored" not in err, err[-800:]
        assert sum(ln.startswith("error:") for ln in err.splitlines()) == 1, err[-800:]
        assert out.read_bytes() == before
        assert {p.name for p in tmp_path.iterdir()} <= {"good.npy", "good.partial.npy"}


def test_a_second_sample_to_the_same_npy_is_refused_naming_the_first(env, configs, tmp_path):
    out = tmp_path / "s.npy"
    first = subprocess.Popen(_sample_cmd(env["cond"], out, num=64), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_child_env(configs))
    lock = Path(str(out) + ".lock")
    t0 = time.time()
    while not lock.exists() and time.time() - t0 < 60:
        time.sleep(0.2)
    assert lock.exists() and first.poll() is None
    second = subprocess.run(_sample_cmd(env["cond"], out, num=8), capture_output=True,
                            text=True, env=_child_env(configs), timeout=120)
    assert second.returncode == 2 and f"(pid {first.pid})" in second.stderr, second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-800:]
    assert np.load(out).shape == (64, 8, 8, 1) and not lock.exists()


def test_a_huge_batch_is_refused_at_once(capsys):
    t0 = time.perf_counter()
    assert main(["train", "--config", str(EXP / "fashion_mnist_ddpm.py"), "--workdir",
                 "/nonexistent/never", "--config.train.batch_size=1000000000"]) == 2
    assert time.perf_counter() - t0 < 10
    assert "train.batch_size=1000000000 needs at least" in capsys.readouterr().err


def test_a_swallowed_interrupt_still_ends_the_run(tmp_path):
    """An interrupt lost on its way (as in a gc callback) ends the run anyway: the watchdog
    exits with 128 + signal after its grace period, with the one line."""
    script = tmp_path / "swallow.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from diffusion_jax.utils.interrupts import Interrupted, honoured_signals
        with honoured_signals(grace=1.0):
            t0, ready = time.time(), False
            while time.time() - t0 < 30:
                try:  # "ready" is printed inside the try: the signal follows it at once
                    if not ready:
                        print("ready", flush=True)
                        ready = True
                    time.sleep(0.05)
                except Interrupted:
                    pass  # swallowed, as an exception raised inside a gc callback is
        sys.exit(0)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 143 and time.time() - t0 < 20, (proc.returncode, err)
    assert err.strip().startswith("error: stopped by SIGTERM")
