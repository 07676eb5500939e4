"""Pretrained models: our flax reproductions of diffusers' UNet2DModel and NVlabs/edm's SongUNet
/ DhariwalUNet against the reference implementations' own outputs.

The fixtures (tests/fixtures/pretrained/*) are small models in the real on-disk formats with
random, perturbed weights, and the torch models' outputs; ``scripts/make_pretrained_fixtures.py``
regenerates them from diffusers and EDM's ``training/networks.py``. No torch is needed here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax.models.unet2d import UNet2D
from diffusion_jax.parallel import make_mesh
from diffusion_jax.pretrained import PretrainedError, diffusers_folder, is_pretrained
from diffusion_jax.pretrained.convert import load_tree, rename_deprecated
from diffusion_jax.utils import safetensors_io

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"
DIFFUSERS = ("ddpm_tiny", "vpred_tiny")
EDM = ("edm_ddpmpp", "edm_ncsnpp", "edm_skip", "edm_adm", "edm_iddpm")


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = dj.load_pretrained(FIXTURES / name)
        return cache[name]
    return get


@pytest.mark.parametrize("name", DIFFUSERS)
def test_diffusers_unet_equals_diffusers(loaded, name):
    """The network's raw output to float32 rounding (diffusers' own float32-vs-float64 error is
    ~1e-6 on these); the denoised x0 to 1e-4 where it is well conditioned. At n = 900 of the
    linear schedule x0 = (x - sigma eps) / alpha multiplies the network's rounding by
    sigma/alpha = 60 in any float32 implementation, so there it is compared through the network
    output alone."""
    pre, ref = loaded(name), np.load(FIXTURES / name / "reference.npz")
    n_t = pre.process.num_timesteps
    net = pre.method.model.net
    for i, n in enumerate(ref["steps"]):
        raw = net.apply({"params": pre.params["net"]}, jnp.asarray(ref["x"]), jnp.full((len(ref["x"]),), float(n)))
        assert rel_err(raw, ref["raw"][i]) < 1e-5, n
        ratio = float(pre.process.sigma((n + 1) / n_t) / pre.process.alpha((n + 1) / n_t))
        if ratio < 10:
            x0 = pre.denoiser(jnp.asarray(ref["x"]), jnp.full((len(ref["x"]),), (n + 1) / n_t))
            assert rel_err(x0, ref["denoised"][i]) < 1e-4, n


def test_consistency_model_with_labels_equals_diffusers(loaded):
    """openai/diffusers-cd_* layout: scale_shift, resnet up/downsampling, class embeddings,
    CMStochasticIterativeScheduler's scalings, at three noise levels."""
    pre, ref = loaded("cd_tiny"), np.load(FIXTURES / "cd_tiny" / "reference.npz")
    assert pre.num_classes == 5
    for i, s in enumerate(ref["sigmas"]):
        x0 = pre.denoiser(jnp.asarray(ref["x"] * s), jnp.full((2,), s), jnp.asarray(ref["labels"]))
        assert rel_err(x0, ref["denoised"][i]) < 1e-4, s


def test_fourier_time_embedding_equals_diffusers():
    folder = FIXTURES / "fourier_net" / "unet"
    ref = np.load(FIXTURES / "fourier_net" / "reference.npz")
    net = UNet2D(diffusers_folder.unet_config(folder))
    x, t = jnp.asarray(ref["x"]), jnp.asarray(ref["t"])
    abstract = jax.eval_shape(lambda k: net.init(k, x, t), jax.random.key(0))["params"]
    tensors = safetensors_io.read(folder / diffusers_folder.WEIGHTS)
    params = load_tree(tensors, abstract, "fixture")
    assert rel_err(net.apply({"params": params}, x, t), ref["out"]) < 1e-5


@pytest.mark.parametrize("name", EDM)
def test_edm_denoiser_equals_edm(loaded, name):
    """D(x; sigma) of EDM's preconditioned network at sigma 0.05, 1, 20, with and without labels;
    our x_t = alpha x_edm in the matching process's time (VP / VE / EDM)."""
    pre, ref = loaded(name), np.load(FIXTURES / name / "reference.npz")
    # NCSN++'s Fourier frequencies are a torch buffer and a (frozen) parameter here
    buffers = sum(int(np.prod(v.shape)) for k, v in safetensors_io.read(
        FIXTURES / name / "model.safetensors").items() if k.endswith("freqs"))
    assert pre.num_params == int(ref["num_params"]) + buffers
    tags = ["uncond"] + (["cond"] if pre.num_classes else [])
    for tag in tags:
        labels = jnp.asarray(ref["labels"]) if tag == "cond" else None
        for i, s in enumerate(ref["sigmas"]):
            t = pre.process.t_of_logsnr(jnp.asarray(-2 * np.log(s)))
            x = (ref["x0"] + s * ref["eps"]) * pre.process.alpha(t)
            out = pre.denoiser(jnp.asarray(x), jnp.full((2,), t), labels)
            assert rel_err(out, ref[f"denoised_{tag}"][i]) < 1e-4, (tag, s)


def test_parameter_count_equals_the_file(loaded):
    for name in DIFFUSERS:
        tensors = safetensors_io.read(FIXTURES / name / "unet" / diffusers_folder.WEIGHTS)
        assert loaded(name).num_params == sum(int(np.prod(v.shape)) for v in tensors.values())


def test_ddim_run_equals_diffusers_ddim_pipeline(loaded):
    """DDIMPipeline(10 inference steps) = our DDIM on the leading grid at the same NFE: 9 steps
    and the final denoising call (10 network evaluations), from the same initial noise, with
    DDIM's own last step (``final="denoise"``: the jump to x0_hat; our default final step is
    the second-order ODE step, which differs from diffusers' by design)."""
    pre, ref = loaded("ddpm_tiny"), np.load(FIXTURES / "ddpm_tiny" / "reference.npz")
    x = dj.sample(pre.denoiser, pre.process, jnp.asarray(ref["ddim_noise"]), sampler="ddim",
                  num_steps=9, grid="leading", final="denoise")
    assert dj.total_nfe("ddim", 9) == 10
    images = np.clip(np.asarray(x) / 2 + 0.5, 0, 1)
    assert np.max(np.abs(images - ref["ddim_images"])) < 1e-3


def test_parameters_are_sharded_by_logical_axes():
    mesh = make_mesh((("data", 2), ("fsdp", 4)))
    pre = dj.load_pretrained(FIXTURES / "edm_adm", mesh=mesh)
    k = pre.params["net"]["enc_8x8_block0"]["conv0"]["kernel"]
    assert k.sharding.spec[-1] == "fsdp" and len(k.addressable_shards) == 8
    assert k.addressable_shards[0].data.shape[-1] == k.shape[-1] // 4


# -- bad input: one line naming the file and what is wrong ---------------------------------

def copy_fixture(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def test_missing_component_is_named(tmp_path):
    d = copy_fixture(tmp_path, "ddpm_tiny")
    (d / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(PretrainedError, match=r"scheduler_config\.json is missing"):
        dj.load_pretrained(d)


def test_mismatched_tensors_name_the_first_three_keys(tmp_path):
    d = copy_fixture(tmp_path, "ddpm_tiny")
    cfg = json.loads((d / "unet" / "config.json").read_text())
    cfg["block_out_channels"] = [32, 48]
    (d / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PretrainedError) as e:
        dj.load_pretrained(d)
    msg = str(e.value)
    assert "diffusion_pytorch_model.safetensors does not match its config" in msg
    assert msg.count("the config gives") == 3 and "\n" not in msg


def test_unknown_class_and_prediction_type_list_the_supported(tmp_path):
    d = copy_fixture(tmp_path, "ddpm_tiny")
    cfg = json.loads((d / "unet" / "config.json").read_text())
    (d / "unet" / "config.json").write_text(json.dumps({**cfg, "_class_name": "UNet3DModel"}))
    with pytest.raises(PretrainedError, match="UNet3DModel.*supported: UNet2DModel"):
        dj.load_pretrained(d)
    (d / "unet" / "config.json").write_text(json.dumps(cfg))
    s = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    (d / "scheduler" / "scheduler_config.json").write_text(json.dumps({**s, "prediction_type": "flow"}))
    with pytest.raises(PretrainedError, match="'flow'.*epsilon, v_prediction, sample"):
        dj.load_pretrained(d)
    e = copy_fixture(tmp_path, "edm_skip")
    c = json.loads((e / "config.json").read_text())
    (e / "config.json").write_text(json.dumps({**c, "model_type": "UNet3"}))
    with pytest.raises(PretrainedError, match="UNet3.*SongUNet, DhariwalUNet"):
        dj.load_pretrained(e)


def test_pickles_are_refused_with_the_export_command(tmp_path):
    pkl = tmp_path / "edm-cifar10-32x32-uncond-vp.pkl"
    pkl.write_bytes(b"\x80\x04not really")
    with pytest.raises(PretrainedError, match="scripts/export_edm.py"):
        dj.load_pretrained(pkl)
    d = copy_fixture(tmp_path, "ddpm_tiny")
    w = d / "unet" / diffusers_folder.WEIGHTS
    w.rename(d / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(PretrainedError, match="pickle.*safe_serialization=True"):
        dj.load_pretrained(d)


def test_a_truncated_safetensors_is_named(tmp_path):
    d = copy_fixture(tmp_path, "edm_skip")
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[:-1000])
    with pytest.raises(ValueError, match="model.safetensors.*truncated or damaged"):
        dj.load_pretrained(d)
    w.write_bytes(data[:5000])
    with pytest.raises(ValueError, match="model.safetensors is truncated or not a safetensors"):
        dj.load_pretrained(d)


def test_safetensors_round_trip(tmp_path):
    import ml_dtypes
    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, ml_dtypes.bfloat16),
         "c": np.zeros((0, 2), np.float16)}
    safetensors_io.write(tmp_path / "x.safetensors", t, {"k": "v"})
    back = safetensors_io.read(tmp_path / "x.safetensors")
    for k in t:
        assert back[k].dtype == t[k].dtype and np.array_equal(back[k], t[k])


def test_deprecated_attention_names_are_read():
    tensors = safetensors_io.read(FIXTURES / "ddpm_tiny" / "unet" / diffusers_folder.WEIGHTS)
    assert any(k.endswith(".query.weight") for k in tensors)  # the fixture stores the old names
    assert not any(k.endswith(".query.weight") for k in rename_deprecated(tensors))
    assert is_pretrained(FIXTURES / "ddpm_tiny") and is_pretrained(FIXTURES / "edm_adm")
    assert not is_pretrained(FIXTURES)


# -- fine-tuning, export, the CLI ---------------------------------------------------------

def test_init_from_starts_at_the_folders_parameters_and_exports_back(tmp_path, configs):
    """``--config.init_from=DIR``: the experiment's model is the folder's network with its
    parameters (the state's params and EMA), and ``export`` writes the same tensors back."""
    from diffusion_jax.config import apply_override
    from diffusion_jax.pretrained.export import state_dict
    cfg = configs.tiny_image(tmp_path)
    apply_override(cfg, f"init_from={FIXTURES / 'vpred_tiny'}")
    exp = configs.experiment(cfg)
    state = jax.jit(exp.method.init)(jax.random.key(0))
    pre = dj.load_pretrained(FIXTURES / "vpred_tiny")
    for a, b, c in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(pre.params),
                       jax.tree_util.tree_leaves(state.ema_params)):
        assert np.array_equal(a, b) and np.array_equal(c, b)
    back = state_dict(state.params["net"], "diffusers")
    orig = safetensors_io.read(FIXTURES / "vpred_tiny" / "unet" / diffusers_folder.WEIGHTS)
    assert set(back) == set(orig)
    assert all(np.array_equal(back[k], np.asarray(orig[k], np.float32)) for k in orig)


def test_init_from_refuses_data_of_another_shape(tmp_path, configs):
    from diffusion_jax.config import apply_override
    from diffusion_jax.settings import ConfigError
    cfg = configs.tiny_image(tmp_path)
    apply_override(cfg, f"init_from={FIXTURES / 'ddpm_tiny'}")  # 16x16x3, the data is 8x8x1
    with pytest.raises(ConfigError, match=r"makes \(16, 16, 3\) images but the data is \(8, 8, 1\)"):
        configs.experiment(cfg)


def test_cli_samples_a_pretrained_folder_and_refuses_bad_labels(tmp_path, capsys, configs):
    from diffusion_jax.cli import main
    out = tmp_path / "s.npz"
    assert main(["sample", "--pretrained", str(FIXTURES / "edm_ddpmpp"), "--sampler", "heun",
                 "--steps", "2", "--num", "4", "--labels", "1,3,0,2", "--guidance", "1.5",
                 "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["images"].shape == (4, 16, 16, 3) and np.all(np.isfinite(f["images"]))
        assert list(f["labels"]) == [1, 3, 0, 2]
    err = configs.cli_error(capsys, ["sample", "--pretrained", str(FIXTURES / "ddpm_tiny"),
                                     "--labels", "2", "--out", str(tmp_path / "x.png")])
    assert "--labels needs a class-conditional model" in err
    err = configs.cli_error(capsys, ["sample", "--pretrained", str(FIXTURES / "edm_adm"),
                                     "--labels", "4", "--out", str(tmp_path / "x.png")])
    assert "4" in err and "[0, 4)" in err
    err = configs.cli_error(capsys, ["sample", "--pretrained", str(FIXTURES / "cd_tiny"),
                                     "--labels", "1", "--guidance", "2",
                                     "--out", str(tmp_path / "x.png")])
    assert "null" in err
    err = configs.cli_error(capsys, ["sample", "--pretrained", str(tmp_path), "--out",
                                     str(tmp_path / "x.png")])
    assert "neither model_index.json" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow  # five calibrations: minutes on 2 cores
def test_optimize_grid_auto_on_a_pretrained_folder_keeps_the_lowest_heldout_error(tmp_path):
    """``--sampler auto``: each candidate that reaches the NFE is calibrated and stored in
    DIR/grids; the winner is the minimum of the held-out errors the run measured."""
    from diffusion_jax.workdir_grids import AUTO_CANDIDATES, optimize_workdir_grid
    d = copy_fixture(tmp_path, "vpred_tiny")
    info = optimize_workdir_grid(str(d), "auto", 5, num=16, iters=2, log=lambda *_: None)
    rows = info["auto"]["candidates"]
    assert [r["sampler"] for r in rows] == [s for s in AUTO_CANDIDATES
                                            if dj.total_nfe(s, dj.samplers.steps_for_budget(s, 5)) == 5]
    best = min(rows, key=lambda r: r["heldout_rmse"])
    assert info["auto"]["winner"] == best["sampler"] == info["sampler"]
    assert (d / "grids" / "auto_nfe5.json").is_file()
    for r in rows:
        assert (d / "grids" / f"{r['sampler']}_{r['steps']}steps.json").is_file()


def test_unknown_latent_pipelines_and_thresholding_are_refused(tmp_path):
    d = copy_fixture(tmp_path, "ddpm_tiny")
    idx = json.loads((d / "model_index.json").read_text())
    (d / "model_index.json").write_text(json.dumps({**idx, "vqvae": ["diffusers", "VQModel"]}))
    with pytest.raises(PretrainedError, match="pipeline 'DDPMPipeline' is not supported; "
                                              "latent pipelines that load: StableDiffusion"):
        dj.load_pretrained(d)
    (d / "model_index.json").write_text(json.dumps(idx))
    s = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    (d / "scheduler" / "scheduler_config.json").write_text(json.dumps({**s, "thresholding": True}))
    with pytest.raises(PretrainedError, match="thresholding"):
        dj.load_pretrained(d)


def test_sampling_runs_on_every_device_and_equals_one_device(loaded):
    """A batch the device count divides is sampled along a ``data`` mesh (8 CPU devices here);
    the samples equal the same sampler run through ``dj.sample`` on one device."""
    pre = loaded("vpred_tiny")
    fn = pre.method.sample_fn("unipc", 4)
    x_T = pre.process.prior_sample(jax.random.key(0), (16,) + pre.shape)
    y = fn(pre.params, x_T, jax.random.key(1))
    assert len(y.sharding.device_set) == jax.device_count() == 8
    one = jax.device_put(x_T, jax.devices()[0])
    params = jax.device_put(pre.params, jax.devices()[0])
    ref = dj.sample(lambda x, t: pre.method.model.apply({"params": params}, x, t), pre.process, one,
                    sampler="unipc", num_steps=4, grid=pre.method.grid)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-5)


def test_iddpm_schedule_puts_timestep_n_at_edms_level():
    """DiscreteVP(betas="iddpm"): sigma/alpha at t = (n+1)/N is iDDPMPrecond's u[N-1-n]."""
    from diffusion_jax.processes import DiscreteVP, iddpm_sigmas
    p, u = DiscreteVP(betas="iddpm"), iddpm_sigmas(1000)
    n = np.array([0, 1, 500, 998, 999])
    t = jnp.asarray((n + 1) / 1000)
    np.testing.assert_allclose(np.asarray(p.sigma(t) / p.alpha(t)), u[999 - n], rtol=2e-5)


def test_bench_samplers_speed_on_a_pretrained_folder(tmp_path):
    from diffusion_jax.cli import main
    assert main(["bench-samplers", "--pretrained", str(FIXTURES / "vpred_tiny"), "--speed",
                 "--batch", "8", "--samplers", "ddim", "--nfe", "4", "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "speed.json").read_text())
    assert row["nfe"] == 4 and row["batch"] == 8 and row["one_call_s"] > 0
    assert row["sampler_overhead"] == pytest.approx(row["sampler_s"] / (4 * row["one_call_s"]))


@pytest.mark.slow  # a grid calibration through the CLI on a folder (~100 s); test_eval_cli
# calibrates and samples with a learned grid on a workdir in the default suite
def test_optimize_grid_out_file_and_sample_with_it_leave_the_folder_untouched(tmp_path, capsys,
                                                                             configs):
    """A read-only pretrained folder: ``optimize-grid --out FILE`` writes the grid there, and
    ``sample --grid FILE`` runs the file's sampler and steps on it."""
    from diffusion_jax.cli import main
    folder = FIXTURES / "vpred_tiny"
    before = sorted(p.name for p in folder.rglob("*"))
    grid = tmp_path / "g.json"
    assert main(["optimize-grid", "--pretrained", str(folder), "--sampler", "dpmpp_2m",
                 "--nfe", "4", "--num", "16", "--iters", "2", "--out", str(grid)]) == 0
    row = json.loads(grid.read_text())
    assert row["sampler"] == "dpmpp_2m" and len(row["ts"]) == 4
    out = tmp_path / "s.npz"
    assert main(["sample", "--pretrained", str(folder), "--grid", str(grid), "--num", "4",
                 "--out", str(out)]) == 0
    assert np.load(out)["images"].shape == (4, 8, 8, 1)
    assert sorted(p.name for p in folder.rglob("*")) == before
    err = configs.cli_error(capsys, ["sample", "--pretrained", str(folder), "--grid", str(grid),
                                     "--sampler", "unipc", "--out", str(tmp_path / "x.png")])
    assert "is dpmpp_2m with 3 steps" in err
