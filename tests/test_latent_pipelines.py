"""Latent pipelines (Stable Diffusion 1.x/2.x, DiT, LDM): each component and a whole DDIM run
with classifier-free guidance against diffusers' and transformers' own outputs.

The fixtures (tests/fixtures/latent/*) are tiny pipelines saved by diffusers'
``save_pretrained`` with random, perturbed weights, and the reference outputs;
``scripts/make_latent_fixtures.py`` regenerates them. No torch is needed here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax.models.autoencoders import AutoencoderKL, VQModel
from diffusion_jax.pretrained import PretrainedError, components
from diffusion_jax.pretrained.tokenizer import CLIPTokenizer
from diffusion_jax.utils import safetensors_io

FIXTURES = Path(__file__).parent / "fixtures" / "latent"
SD = ("sd15_tiny", "sd21_tiny")


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def ref(name: str) -> dict:
    return dict(np.load(FIXTURES / name / "reference.npz"))


def prompts(name: str) -> dict:
    return json.loads((FIXTURES / name / "prompts.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = dj.load_pretrained(FIXTURES / name)
        return cache[name]
    return get


def component(name: str, kind: str):
    return component_at(FIXTURES / name, kind)


@pytest.mark.parametrize("name", SD)
def test_tokenizer_gives_transformers_ids_for_30_prompts(name):
    """Empty, unicode, emoji, special tokens in the text, whitespace runs, and prompts longer
    than the window (cut to 75 tokens + start/end, as the pipelines call the tokenizer); SD 2.x
    pads with "!" (id 0), SD 1.x with the end token."""
    tok = CLIPTokenizer.from_folder(FIXTURES / name / "tokenizer")
    ids = tok(prompts(name)["prompts"], quiet=True)
    expected = ref(name)["prompts_ids"]
    assert len(expected) == 30
    bad = [i for i in range(30) if not np.array_equal(ids[i], expected[i])]
    assert not bad, f"prompts {bad} differ"
    assert ids[0][2] == (tok.pad) and (tok.pad == 0) == (name == "sd21_tiny")


def test_long_prompts_are_cut_with_a_note(capsys):
    tok = CLIPTokenizer.from_folder(FIXTURES / "sd15_tiny" / "tokenizer")
    n = len(tok.ids("word " * 100))
    assert n > 75
    ids = tok(["word " * 100, "short"])
    err = capsys.readouterr().err
    assert f"prompt 0 has {n} tokens" in err and f"last {n - 75} are dropped" in err
    assert "prompt 1" not in err
    assert ids.shape == (2, 77) and ids[0, -1] == tok.eos


@pytest.mark.parametrize("name", SD)
def test_text_encoder_and_unet_equal_the_references(name):
    r = ref(name)
    text, tp = component(name, "text_encoder")
    assert rel_err(text.apply({"params": tp}, r["text_ids"]), r["text_hidden"]) < 1e-4
    unet, up = component(name, "unet")
    out = unet.apply({"params": up}, r["unet_x"], r["unet_t"], r["unet_context"])
    assert rel_err(out, r["unet_out"]) < 1e-4


def test_sd21_config_has_its_variants():
    cfg = components.config_of(FIXTURES / "sd21_tiny" / "unet", "unet")
    assert cfg.use_linear_projection and cfg.upcast_attention and cfg.heads() == (2, 4)
    text = components.config_of(FIXTURES / "sd21_tiny" / "text_encoder", "text_encoder")
    assert text.hidden_act == "gelu"


def test_autoencoders_equal_the_references():
    r = ref("sd15_tiny")
    vae, p = component("sd15_tiny", "vae")
    mean, _ = vae.apply({"params": p}, r["vae_images"], method=AutoencoderKL.encode)
    assert rel_err(mean, r["vae_mean"]) < 1e-4
    assert rel_err(vae.apply({"params": p}, r["vae_latents"], method=AutoencoderKL.decode),
                   r["vae_decoded"]) < 1e-4
    r = ref("ldm_tiny")
    vq, p = component("ldm_tiny", "vqvae")
    assert rel_err(vq.apply({"params": p}, r["vq_images"], method=VQModel.encode),
                   r["vq_encoded"]) < 1e-4
    assert rel_err(vq.apply({"params": p}, r["vq_latents"], method=VQModel.decode),
                   r["vq_decoded"]) < 1e-4


def test_dit_transformer_equals_the_reference():
    """Labels 1, 7 and the null class 1000; 8 output channels (learned sigma) compared whole."""
    r = ref("dit_tiny")
    net, p = component("dit_tiny", "transformer")
    assert rel_err(net.apply({"params": p}, r["net_x"], r["net_t"], r["net_y"]), r["net_out"]) < 1e-4


def test_parameter_counts_equal_the_files(loaded):
    for name, kind in (("sd15_tiny", "unet"), ("dit_tiny", "transformer")):
        tensors = safetensors_io.read(components.weights_of(FIXTURES / name / kind, kind))
        assert loaded(name).num_params == sum(int(np.prod(v.shape)) for v in tensors.values())


def ddim_ts(offset: int, steps: int = 10, n: int = 1000) -> np.ndarray:
    """DDIMScheduler's "leading" timesteps with ``steps_offset``, as our times ``(k + 1) / N``,
    ending at the level its last step goes to: timestep 0 (``set_alpha_to_one=False``)."""
    k = np.arange(steps - 1, -1, -1) * (n // steps) + offset
    return np.append((k + 1.0) / n, 1.0 / n)


@pytest.mark.parametrize("name", SD)
def test_text_to_image_pipeline_equals_diffusers(loaded, name):
    """StableDiffusionPipeline (two prompts, a negative prompt, guidance 7.5, DDIM 10 steps,
    steps_offset 1, set_alpha_to_one False) = our DDIM over the same 10 timesteps, 10 network
    calls (the prompt and the negative prompt in one batched call), the same noise; SD 2.x's is
    v-prediction."""
    pre, r, pr = loaded(name), ref(name), prompts(name)
    ctx = pre.encode_prompt(pr["pipe_prompts"])
    null = pre.encode_prompt([pr["negative"]] * 2)

    def guided(x, t):
        both = pre.denoiser(jnp.concatenate([x, x]), t, context=jnp.concatenate([ctx, null]))
        return both[2:] + 7.5 * (both[:2] - both[2:])

    z = dj.sample(guided, pre.process, jnp.asarray(r["pipe_noise"]), sampler="ddim",
                  ts=ddim_ts(offset=1), final_denoise=False)
    assert rel_err(z, r["pipe_latents"]) < 1e-3
    images = np.clip(np.asarray(pre.decode(z)) / 2 + 0.5, 0, 1)
    assert np.max(np.abs(images - r["pipe_images"])) < 1e-3


def test_dit_and_ldm_pipelines_equal_diffusers(loaded):
    """DiTPipeline (labels 1, 7; guidance 4 with null class 1000; DDIM 10 steps) and
    LDMPipeline (VQ decoder) = our DDIM on the leading grid: 9 steps and the final denoising
    call (10 network calls each)."""
    pre, r = loaded("dit_tiny"), ref("dit_tiny")
    y = jnp.asarray(r["pipe_labels"])
    den = dj.guidance.classifier_free_guidance(lambda x, t, yy: pre.denoiser(x, t, yy), y,
                                               1000, 4.0)
    z = dj.sample(den, pre.process, jnp.asarray(r["pipe_noise"]), sampler="ddim", num_steps=9,
                  grid="leading", final="denoise")
    assert np.max(np.abs(np.clip(np.asarray(pre.decode(z)) / 2 + 0.5, 0, 1) - r["pipe_images"])) < 1e-3
    pre, r = loaded("ldm_tiny"), ref("ldm_tiny")
    z = dj.sample(pre.denoiser, pre.process, jnp.asarray(r["pipe_noise"]), sampler="ddim",
                  num_steps=9, grid="leading", final="denoise")
    assert np.max(np.abs(np.clip(np.asarray(pre.decode(z)) / 2 + 0.5, 0, 1) - r["pipe_images"])) < 1e-3


def test_encode_then_decode_shapes_and_scaling(loaded):
    pre = loaded("sd15_tiny")
    assert pre.shape == (8, 8, 4) and pre.image_shape == (16, 16, 3)
    r = ref("sd15_tiny")
    z = pre.encode(r["vae_images"])
    assert rel_err(z, r["vae_mean"] * 0.5) < 1e-4      # scaling_factor 0.5 in the fixture
    assert pre.decode(z).shape == (2, 16, 16, 3)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "diffusion_jax", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_cli_text_to_image_and_its_bad_inputs(tmp_path):
    sd, dit = FIXTURES / "sd15_tiny", FIXTURES / "dit_tiny"
    out = tmp_path / "x.npz"
    r = run_cli("sample", "--pretrained", sd, "--prompt", "a photo of a cat", "--prompt",
                "word " * 90, "--sampler", "unipc", "--nfe", "5", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "note: prompt 1 has" in r.stderr
    images = np.load(out)["images"]
    assert images.shape == (2, 16, 16, 3) and np.all(np.isfinite(images))
    bad = [
        (["--pretrained", dit, "--prompt", "a cat"], "--prompt is not an option"),
        (["--pretrained", sd, "--labels", "1"], "--labels is not an option"),
        (["--pretrained", sd, "--prompt", "a", "--prompt", "b", "--num", "3"],
         "2 prompts but --num 3"),
        (["--pretrained", sd], "pass --prompt"),
        (["--pretrained", sd, "--negative-prompt", "x"], "pass --prompt too"),
        (["--pretrained", sd, "--prompts", tmp_path / "none.txt"], "no such file"),
        (["--pretrained", sd, "--prompt", "a", "--sampler", "heun", "--nfe", "4"],
         "--nfe 4 is not reachable with heun"),
        (["--pretrained", sd, "--prompt", "a", "--nfe", "4"], "--nfe needs --sampler"),
    ]
    for args, msg in bad:
        r = run_cli("sample", *args, "--out", tmp_path / "y.png")
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "y.png").exists()


def test_broken_folders_are_named_before_compiling(tmp_path):
    sd = tmp_path / "sd"
    shutil.copytree(FIXTURES / "sd15_tiny", sd)
    (sd / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(PretrainedError, match="tokenizer/merges.txt is missing"):
        dj.load_pretrained(sd)
    shutil.copy(FIXTURES / "sd15_tiny" / "tokenizer" / "merges.txt", sd / "tokenizer")
    cfg = json.loads((sd / "text_encoder" / "config.json").read_text())
    cfg["hidden_size"] = 48
    (sd / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PretrainedError, match="hidden_size=48 but the U-Net's cross_attention_dim=32"):
        dj.load_pretrained(sd)


@pytest.mark.slow
def test_inversion_in_latent_space_regenerates_better_with_more_steps(loaded):
    """The image's latents inverted with the prompt and regenerated with it: the error falls
    as the steps grow (Heun, second order; the fixture's random network makes the error large
    in absolute terms, so only its falling is asserted here; the exact-mixture test in
    test_samplers.py checks the order)."""
    pre, r = loaded("sd15_tiny"), ref("sd15_tiny")
    z0 = pre.encode(r["vae_images"])
    ctx = pre.encode_prompt(["a photo of a cat"] * 2)
    den = lambda x, t: pre.denoiser(x, t, context=ctx)
    errs = []
    for n in (5, 10, 20):
        x_T = dj.invert(den, pre.process, z0, sampler="heun", num_steps=n, grid="logsnr")
        z = dj.sample(den, pre.process, x_T, sampler="heun", num_steps=n, grid="logsnr")
        errs.append(float(jnp.sqrt(jnp.mean((z - z0) ** 2))))
    assert errs[0] > errs[1] > errs[2]


def images(tmp_path) -> tuple[Path, Path]:
    from PIL import Image
    pixels = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "img.png")
    Image.fromarray(pixels[:15, :13]).save(tmp_path / "odd.png")
    return tmp_path / "img.png", tmp_path / "odd.png"


def test_latent_edits_refuse_bad_images_and_samplers(tmp_path):
    img, odd = images(tmp_path)
    bad = [(["--init-image", odd, "--strength", "0.5"],
            "is 15x13; the autoencoder works on multiples of 2: resize it to 16x12"),
           (["--invert", img, "--sampler", "ddpm"], "deterministic sampler"),
           (["--invert", img, "--strength", "0.5"], "does not combine")]
    for args, msg in bad:
        r = run_cli("sample", "--pretrained", FIXTURES / "sd15_tiny", "--prompt", "a cat", *args,
                    "--out", tmp_path / "y.png")
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
    assert not (tmp_path / "y.png").exists()


@pytest.mark.slow
def test_cli_img2img_inpainting_and_inversion_in_latent_space(tmp_path):
    sd = FIXTURES / "sd15_tiny"
    img, _ = images(tmp_path)
    for extra in (["--init-image", img, "--strength", "0.6"],
                  ["--init-image", img, "--mask", "center"],
                  ["--invert", img, "--sampler", "ddim", "--guidance", "1"]):
        r = run_cli("sample", "--pretrained", sd, "--prompt", "a cat", "--steps", "3", *extra,
                    "--out", tmp_path / "x.npz")
        assert r.returncode == 0, (extra, r.stderr)
        out = np.load(tmp_path / "x.npz")
        assert out["images"].shape == (1, 16, 16, 3) and np.all(np.isfinite(out["images"]))


def test_calibration_and_eval_of_a_text_model_need_prompts(tmp_path):
    sd = FIXTURES / "sd15_tiny"
    r = run_cli("optimize-grid", "--pretrained", sd, "--sampler", "unipc", "--nfe", "5")
    assert r.returncode == 2 and "calibrate on prompts you give with --prompts FILE" in r.stderr
    np.savez(tmp_path / "s.npz", mu=np.zeros(64), sigma=np.eye(64))
    r = run_cli("eval", "--pretrained", sd, "--inception", tmp_path / "w.npz", "--ref-stats",
                tmp_path / "s.npz", "--nfe", "5", "--num", "100")
    assert r.returncode == 2 and "evaluated on prompts you give: pass --prompts" in r.stderr, \
        r.stderr
    (tmp_path / "p.txt").write_text("a cat\n")
    r = run_cli("optimize-grid", "--pretrained", FIXTURES / "dit_tiny", "--sampler", "unipc",
                "--nfe", "5", "--prompts", tmp_path / "p.txt")
    assert r.returncode == 2 and "--prompts is for text-to-image models" in r.stderr
    (tmp_path / "p5.txt").write_text("".join(f"prompt {i}\n" for i in range(5)))
    r = run_cli("optimize-grid", "--pretrained", sd, "--sampler", "learned_pc", "--nfe", "5",
                "--prompts", tmp_path / "p5.txt", "--num", "16")
    assert r.returncode == 2 and "first 12 of --num 16 draws, which must be a multiple of 5" in \
        r.stderr and "use --num 20" in r.stderr, r.stderr


@pytest.mark.slow
def test_learned_grid_calibrated_on_prompts_beats_logsnr_and_samples(tmp_path):
    """optimize-grid on the user's prompts (cycled over the calibration draws, guidance 7.5):
    the held-out error to the PF-ODE endpoint under the same prompts is below the default
    grid's, and sample --grid FILE uses it; the folder is untouched."""
    sd = FIXTURES / "sd15_tiny"
    (tmp_path / "p.txt").write_text("a photo of a cat\nan astronaut riding a horse\n\na red chair\n")
    r = run_cli("optimize-grid", "--pretrained", sd, "--sampler", "unipc", "--nfe", "5",
                "--prompts", tmp_path / "p.txt", "--num", "16", "--iters", "10",
                "--out", tmp_path / "g.json")
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "g.json").read_text())
    assert info["heldout_rmse"] < info["heldout_rmse_default"]
    r = run_cli("sample", "--pretrained", sd, "--prompt", "a cat", "--grid", tmp_path / "g.json",
                "--out", tmp_path / "x.npz")
    assert r.returncode == 0, r.stderr
    assert not (sd / "grids").exists()


def test_blocked_attention_equals_softmax_attention_and_its_gradient():
    """The online-softmax blocks (what long sequences take on CPU) against
    jax.nn.dot_product_attention: values and gradients, with scores large enough that an
    un-stabilised exponential would overflow."""
    from diffusion_jax.models.layers import blocked_attention
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 32, 3, 8)) * s
               for i, s in ((0, 30.0), (1, 1.0), (2, 1.0)))
    ref_out = jax.nn.dot_product_attention(q, k, v)
    out = blocked_attention(q, k, v, block_q=8, block_k=16)
    assert float(jnp.max(jnp.abs(out - ref_out))) < 1e-5
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
    g_ref = jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    g = jax.grad(loss(lambda q, k, v: blocked_attention(q, k, v, 8, 16)), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g, g_ref):
        assert float(jnp.max(jnp.abs(a - b))) < 1e-4 * float(jnp.max(jnp.abs(b))) + 1e-6


def _pairs(tmp_path, n=8):
    rng = np.random.default_rng(0)
    captions = np.array(["a red dress", "a blue shoe", "a green bag", "a photo of a cat",
                         "a dog", "two birds", "the sea", "a hat"][:n])
    path = tmp_path / "pairs.npz"
    np.savez(path, images=rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), captions=captions)
    return path


def _finetune_config(data: str, steps: int):
    from diffusion_jax.config import apply_override, load_config

    cfg = load_config("sd15_finetune")
    for o in (f"init_from={FIXTURES / 'sd15_tiny'}", f"data.dataset={data}",
              "data.image_size=16", f"train.steps={steps}", "train.batch_size=8",
              "train.ckpt_every=2", "train.log_every=1", "sample.num_steps=3", "sample.num=2",
              "optimizer.lr=1e-3", "optimizer.warmup_steps=0"):
        apply_override(cfg, o)
    return cfg


@pytest.mark.slow
def test_sd_fine_tuning_resumes_exactly_and_keeps_the_frozen_parts(tmp_path):
    """experiments/sd15_finetune.py on the tiny SD folder: a run stopped at step 2 and resumed
    equals the uninterrupted 4-step run bit for bit (U-Net, EMA, optimizer, data position); the
    VAE and text encoder in the state are the folder's, untouched; the U-Net moved."""
    from diffusion_jax.config import apply_override
    from diffusion_jax.experiment import from_config
    from diffusion_jax.pretrained.latent_pipeline import load_frozen, read
    from diffusion_jax.train.loop import train

    data = f"npz:{_pairs(tmp_path)}"
    full = train(from_config(_finetune_config(data, 4)), str(tmp_path / "full"))
    cfg = _finetune_config(data, 2)
    train(from_config(cfg), str(tmp_path / "split"))
    apply_override(cfg, "train.steps=4")
    split = train(from_config(cfg), str(tmp_path / "split"))
    assert full["step"] == split["step"] == 4 and Path(full["samples"]).is_file()
    a, b = _state(tmp_path / "full"), _state(tmp_path / "split")
    assert a["data"] == b["data"]
    la, lb = jax.tree_util.tree_leaves(a["state"]), jax.tree_util.tree_leaves(b["state"])
    assert len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))
    pre = dj.load_pretrained(FIXTURES / "sd15_tiny")
    frozen = load_frozen(read(FIXTURES / "sd15_tiny", json.loads(
        (FIXTURES / "sd15_tiny" / "model_index.json").read_text()))[1])
    for x, y in zip(jax.tree_util.tree_leaves(a["state"]["autoencoder"]),
                    jax.tree_util.tree_leaves(frozen)):
        np.testing.assert_array_equal(x, y)
    moved = [float(np.max(np.abs(x - np.asarray(y)))) for x, y in zip(
        jax.tree_util.tree_leaves(a["state"]["params"]), jax.tree_util.tree_leaves(pre.params))]
    assert max(moved) > 1e-4


def _state(workdir):
    import orbax.checkpoint as ocp

    from diffusion_jax.checkpoint import Checkpointer

    ck = Checkpointer(workdir)
    return ck.manager.restore(ck.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))


@pytest.mark.slow  # ~50 s of compiling the SD step (the suite's time budget)
def test_sd_fine_tuning_step_reads_the_captions_and_fits_a_pair(tmp_path):
    """The jitted step on real computation: the loss depends on the caption (the frozen text
    encoder's context reaches the U-Net), caption dropout with probability ~1 makes every
    caption the empty prompt's, and 30 steps on one image/caption pair lower that pair's
    loss at a fixed key."""
    import dataclasses

    from diffusion_jax.experiment import from_config

    method = from_config(_finetune_config(f"npz:{_pairs(tmp_path)}", 4)).method
    assert method.example_fields == ("caption",) and method.takes_prompts
    rng = np.random.default_rng(1)
    image = rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    batch = lambda caps: {k: jnp.asarray(v) for k, v in method.host_batch(
        {"image": image, "label": np.zeros(8, np.int32), "caption": np.array(caps)}).items()}
    b1, b2 = batch(["a red dress"] * 8), batch(["two birds on a wire"] * 8)
    assert set(b1) == {"image", "label", "ids", "null_ids"}
    state = jax.jit(method.init)(jax.random.key(0))
    step = jax.jit(method.train_step)
    key = jax.random.key(3)
    l1, l2 = float(step(state, b1, key)[1]["loss"]), float(step(state, b2, key)[1]["loss"])
    assert abs(l1 - l2) > 1e-4 * abs(l1)
    dropped = jax.jit(dataclasses.replace(method, caption_drop=0.999999).train_step)
    d1, d2 = float(dropped(state, b1, key)[1]["loss"]), float(dropped(state, b2, key)[1]["loss"])
    assert d1 == d2 != l1
    before = l1
    for i in range(30):
        state, _ = step(state, b1, jax.random.key(100 + i))
    state = dataclasses.replace(state, step=jnp.zeros_like(state.step))
    assert float(step(state, b1, key)[1]["loss"]) < 0.9 * before


def test_fine_tuning_bad_inputs_are_one_line(tmp_path):
    """A dataset without captions, previews prompts on a model without a text encoder, and a
    caption folder whose metadata names a missing file: one line each, before compiling."""
    no_caps = tmp_path / "nocaps.npz"
    np.savez(no_caps, images=np.zeros((8, 16, 16, 3), np.uint8))
    common = ["train", "--config", "sd15_finetune", f"--config.init_from={FIXTURES / 'sd15_tiny'}",
              "--config.data.image_size=16", "--config.train.steps=1"]
    r = run_cli(*common, f"--config.data.dataset=npz:{no_caps}", "--workdir", tmp_path / "a")
    assert r.returncode != 0 and "has no 'caption' field" in r.stderr, r.stderr
    assert len([l for l in r.stderr.splitlines() if l and not l.startswith("note:")]) == 1
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "a cat"}\n')
    r = run_cli(*common, f"--config.data.dataset=captions:{folder}", "--workdir", tmp_path / "b")
    assert r.returncode != 0 and "gone.png does not exist" in r.stderr, r.stderr
    from diffusion_jax.config import load_config
    from diffusion_jax.experiment import ConfigError, from_config

    cfg = load_config("fashion_mnist_ddpm")
    cfg.sample.prompts = ("a cat",)
    with pytest.raises(ConfigError, match="sample.prompts is for fine-tuning"):
        from_config(cfg)


def test_caption_folder_resizes_and_crops(tmp_path):
    from PIL import Image

    from diffusion_jax.data.sources import get_source

    img = np.zeros((40, 60, 3), np.uint8)
    img[:, 10:50] = 255  # the centre 40x40 is white after the crop
    Image.fromarray(img).save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "white"}\n\n')
    src = get_source(f"captions:{tmp_path}", "train", None, 20)
    assert len(src) == 1
    ex = src[0]
    assert ex["caption"] == "white" and ex["image"].shape == (20, 20, 3)
    assert ex["image"].dtype == np.uint8 and ex["image"].min() > 200


def test_live_reference_text_encoder_and_unet(tmp_path):
    """Where torch, diffusers and transformers are installed: fresh random components (every
    parameter perturbed) saved by the references themselves and read by our loader. Skipped
    without them (the suite needs only the committed fixtures above)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=98, eos_token_id=99,
        pad_token_id=99)).eval()
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
        norm_num_groups=4, use_linear_projection=True).eval()
    with torch.no_grad():
        for m in (text, unet):
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    text.save_pretrained(tmp_path / "text_encoder", safe_serialization=True)
    unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    ids = np.random.default_rng(0).integers(0, 100, (2, 77)).astype(np.int32)
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 4)).astype(np.float32)
    with torch.no_grad():
        hidden = text(torch.from_numpy(ids).long())[0]
        out = unet(torch.from_numpy(x).permute(0, 3, 1, 2), torch.tensor([900, 10]), hidden)
    ours_text, tp = component_at(tmp_path, "text_encoder")
    ctx = ours_text.apply({"params": tp}, ids)
    assert rel_err(ctx, hidden.numpy()) < 1e-4
    ours, up = component_at(tmp_path, "unet")
    assert rel_err(ours.apply({"params": up}, x, np.array([900, 10]), hidden.numpy()),
                   out.sample.permute(0, 2, 3, 1).numpy()) < 1e-4


def component_at(folder: Path, kind: str):
    m = components.component(folder / kind, kind)
    return m, components.load_params(m, folder / kind, kind, *components.example_inputs(m))
