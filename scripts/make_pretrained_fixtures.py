"""Make the pretrained-model fixtures of tests/test_pretrained.py from the reference
implementations: diffusers (pip) and NVlabs/edm's training/networks.py (a local checkout).

Each fixture is a small model in the real on-disk format with random weights (every parameter
perturbed, so zero-initialised layers are not zero; stored as float16 to keep the files small,
and the reference outputs computed from exactly those rounded weights), plus ``reference.npz``:
inputs and the torch model's outputs. The test suite reads them without torch.

Regenerate (torch, diffusers and this package importable; EDM cloned from
https://github.com/NVlabs/edm):

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 diffusers safetensors -e .
    /tmp/ref/bin/python scripts/make_pretrained_fixtures.py --edm PATH/TO/edm

``--full`` instead checks the full-size configurations of google/ddpm-cifar10-32 and EDM's
CIFAR-10 DDPM++/NCSN++ against our loader (random weights, nothing written, figures printed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pretrained"


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.2) -> None:
    """Every parameter (and float buffer that is a parameter in our model, like Fourier
    frequencies) moved by noise, then rounded to float16 (what the fixture stores)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * max(float(p.std()) if p.numel() > 1 else 0, 0.5))
            p.copy_(p.half().float())
        for b in module.buffers():  # stored in float16 too (e.g. Fourier frequencies)
            if b.is_floating_point():
                b.copy_(b.half().float())


def f16_safetensors(path: Path) -> None:
    """Rewrite a safetensors file with its float tensors in float16 (the values already are)."""
    from safetensors.torch import load_file, save_file
    t = load_file(str(path))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in t.items()}, str(path))


def deprecated_names(path: Path) -> None:
    """Store attention tensors under diffusers' pre-0.15 names, as google/ddpm-cifar10-32 has."""
    from safetensors.torch import load_file, save_file
    t = load_file(str(path))
    ren = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    out = {}
    for k, v in t.items():
        for new, old in ren.items():
            if ".attentions." in k and f".{new}." in k:
                k = k.replace(f".{new}.", f".{old}.")
        out[k] = v
    save_file(out, str(path))


def ddpm_tiny(out: Path) -> None:
    """DDPM-cifar10-style (DownBlock2D/AttnDownBlock2D, padding 0, sin-first embedding) with
    DDPMScheduler(linear, clip_sample); the reference includes a 10-step DDIMPipeline run (with
    ``use_clipped_model_output``: epsilon recomputed from the clipped x0, the DDIM step of an x0
    denoiser; without it diffusers mixes a clipped x0 with the unclipped epsilon)."""
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                       norm_num_groups=8, attention_head_dim=None, downsample_padding=0,
                       flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6)
    perturb(unet, 1, scale=0.05)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    DDPMPipeline(unet, sched).save_pretrained(out, safe_serialization=True)
    f16_safetensors(out / "unet" / "diffusion_pytorch_model.safetensors")
    deprecated_names(out / "unet" / "diffusion_pytorch_model.safetensors")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 16, 16, generator=g)
    ref = discrete_reference(unet, sched, x, [900, 500, 20], None)
    ddim = DDIMPipeline(unet, DDIMScheduler.from_config(sched.config))
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    img = ddim(batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=10,
               eta=0.0, output_type="np", use_clipped_model_output=True).images
    ref.update(ddim_noise=nchw_to_nhwc(noise), ddim_images=np.asarray(img, np.float32))
    np.savez(out / "reference.npz", **ref)


def cd_tiny(out: Path) -> None:
    """openai/diffusers-cd_imagenet64-style: ResnetDownsampleBlock2D, resnet up/downsampling in
    the attention blocks, scale_shift, class embeddings, CMStochasticIterativeScheduler."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                       down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
                       layers_per_block=1, norm_num_groups=8, attention_head_dim=16,
                       resnet_time_scale_shift="scale_shift", num_class_embeds=5,
                       downsample_type="resnet", upsample_type="resnet")
    perturb(unet, 2, scale=0.05)
    sched = CMStochasticIterativeScheduler()
    ConsistencyModelPipeline(unet, sched).save_pretrained(out, safe_serialization=True)
    f16_safetensors(out / "unet" / "diffusion_pytorch_model.safetensors")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 16, 16, generator=g)
    labels = torch.tensor([1, 4])
    ref = {"x": nchw_to_nhwc(x), "labels": labels.numpy(), "sigmas": np.array([0.05, 1.0, 20.0])}
    outs = []
    for s in ref["sigmas"]:
        xs = x * s
        c_skip, c_out = sched.get_scalings_for_boundary_condition(torch.tensor(s))
        inp = xs / (s ** 2 + sched.config.sigma_data ** 2) ** 0.5
        t = torch.full((2,), sched.sigma_to_t(np.array([s]))[0], dtype=torch.float32)
        with torch.no_grad():
            f = unet(inp, t, class_labels=labels).sample
        outs.append(nchw_to_nhwc(c_skip * xs + c_out * f))
    ref["denoised"] = np.stack(outs)
    np.savez(out / "reference.npz", **ref)


def vpred_tiny(out: Path) -> None:
    """v-prediction on the cosine schedule (squaredcos_cap_v2), center_input_sample, heads."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                       down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D"), layers_per_block=2,
                       norm_num_groups=4, attention_head_dim=8, center_input_sample=True,
                       mid_block_scale_factor=1.4)
    perturb(unet, 5, scale=0.05)
    sched = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                          clip_sample=False)
    DDIMPipeline(unet, sched).save_pretrained(out, safe_serialization=True)
    f16_safetensors(out / "unet" / "diffusion_pytorch_model.safetensors")
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    np.savez(out / "reference.npz", **discrete_reference(unet, sched, x, [999, 400, 3], None))


def fourier_net(out: Path) -> None:
    """time_embedding_type='fourier' (NCSN++'s): the network alone (output / sigma)."""
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 16),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                       norm_num_groups=4, time_embedding_type="fourier", flip_sin_to_cos=True)
    perturb(unet, 6, scale=0.05)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    f16_safetensors(out / "unet" / "diffusion_pytorch_model.safetensors")
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([0.3, 7.0])
    with torch.no_grad():
        y = unet(x, t).sample
    np.savez(out / "reference.npz", x=nchw_to_nhwc(x), t=t.numpy(), out=nchw_to_nhwc(y))


def nchw_to_nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy().astype(np.float32)


def discrete_reference(unet, sched, x, steps, labels) -> dict:
    """x_t = sqrt(abar) x0 + ... is not needed: the denoiser is evaluated at the given x_t; the
    reference x0_hat is the scheduler's own conversion (and clipping) of the network output."""
    abar = sched.alphas_cumprod
    outs, raws = [], []
    for n in steps:
        with torch.no_grad():
            e = unet(x, torch.full((x.shape[0],), n), class_labels=labels).sample
        a, s = abar[n] ** 0.5, (1 - abar[n]) ** 0.5
        kind = sched.config.prediction_type
        x0 = (x - s * e) / a if kind == "epsilon" else a * x - s * e if kind == "v_prediction" else e
        if sched.config.clip_sample:
            x0 = x0.clamp(-sched.config.clip_sample_range, sched.config.clip_sample_range)
        outs.append(nchw_to_nhwc(x0))
        raws.append(nchw_to_nhwc(e))
    return {"x": nchw_to_nhwc(x), "steps": np.array(steps), "denoised": np.stack(outs),
            "raw": np.stack(raws)}


EDM_FIXTURES = {
    # DDPM++ (EDM's CIFAR-10 architecture, reduced), class-conditional, under EDMPrecond
    "edm_ddpmpp": ("EDMPrecond", dict(img_resolution=16, img_channels=3, label_dim=4,
                                      model_type="SongUNet", model_channels=16,
                                      channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                                      dropout=0.0, embedding_type="positional",
                                      channel_mult_noise=1, encoder_type="standard",
                                      decoder_type="standard", resample_filter=[1, 1])),
    # NCSN++ (Fourier embedding, residual encoder, FIR filter) under VEPrecond
    "edm_ncsnpp": ("VEPrecond", dict(img_resolution=16, img_channels=3, label_dim=0,
                                     model_type="SongUNet", model_channels=16, channel_mult=[1, 2],
                                     num_blocks=1, attn_resolutions=[8], dropout=0.0,
                                     embedding_type="fourier", channel_mult_noise=2,
                                     encoder_type="residual", decoder_type="standard",
                                     resample_filter=[1, 3, 3, 1])),
    # skip encoder and decoder under VPPrecond
    "edm_skip": ("VPPrecond", dict(img_resolution=8, img_channels=1, label_dim=0,
                                   model_type="SongUNet", model_channels=16, channel_mult=[1, 2],
                                   num_blocks=1, attn_resolutions=[4], dropout=0.0,
                                   embedding_type="positional", channel_mult_noise=1,
                                   encoder_type="skip", decoder_type="skip",
                                   resample_filter=[1, 3, 3, 1])),
    # ADM, class-conditional, under EDMPrecond
    "edm_adm": ("EDMPrecond", dict(img_resolution=8, img_channels=3, label_dim=4,
                                   model_type="DhariwalUNet", model_channels=64,
                                   channel_mult=[1, 1], channel_mult_emb=1, num_blocks=1,
                                   attn_resolutions=[4], dropout=0.0)),
    # iDDPM (ADM with learned variances) under iDDPMPrecond: the nearest of 1000 noise levels
    "edm_iddpm": ("iDDPMPrecond", dict(img_resolution=8, img_channels=1, label_dim=3,
                                       model_type="DhariwalUNet", model_channels=64,
                                       channel_mult=[1, 1], channel_mult_emb=1, num_blocks=1,
                                       attn_resolutions=[4], dropout=0.0)),
}


def edm_fixture(name: str, precond: str, kwargs: dict, out: Path, edm: Path) -> None:
    sys.path.insert(0, str(edm))
    from training import networks  # noqa: PLC0415 - EDM's code, from the user's checkout
    sys.path.pop(0)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from export_edm import export  # noqa: PLC0415
    torch.manual_seed(0)
    net = getattr(networks, precond)(**kwargs).eval()
    perturb(net, 11, scale=0.05)
    export(net, precond, kwargs, out)
    f16_safetensors(out / "model.safetensors")
    c = kwargs["img_channels"]
    r = kwargs["img_resolution"]
    x0 = torch.randn(2, c, r, r, generator=torch.Generator().manual_seed(8))
    eps = torch.randn(2, c, r, r, generator=torch.Generator().manual_seed(9))
    labels = torch.tensor([0, kwargs["label_dim"] - 1 if kwargs["label_dim"] else 0])
    sigmas = [0.05, 1.0, 20.0]
    ref = {"x0": nchw_to_nhwc(x0), "eps": nchw_to_nhwc(eps), "sigmas": np.array(sigmas),
           "labels": labels.numpy()}
    for tag, lab in (("uncond", None), ("cond", labels)):
        if lab is not None and not kwargs["label_dim"]:
            continue
        onehot = None if lab is None else torch.nn.functional.one_hot(lab, kwargs["label_dim"]).float()
        outs = []
        for s in sigmas:
            with torch.no_grad():
                d = net(x0 + s * eps, torch.full((2,), s), onehot)
            outs.append(nchw_to_nhwc(d))
        ref[f"denoised_{tag}"] = np.stack(outs)
    ref["num_params"] = np.array(sum(p.numel() for p in net.model.parameters()))
    np.savez(out / "reference.npz", **ref)


DDPM_CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3,
                   block_out_channels=(128, 256, 256, 256),
                   down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                   layers_per_block=2, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
                   norm_eps=1e-6, norm_num_groups=32, attention_head_dim=None)
EDM_CIFAR10 = {
    "DDPM++": dict(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet",
                   model_channels=128, channel_mult=[2, 2, 2], dropout=0.13,
                   embedding_type="positional", encoder_type="standard", decoder_type="standard",
                   channel_mult_noise=1, resample_filter=[1, 1]),
    "NCSN++": dict(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet",
                   model_channels=128, channel_mult=[2, 2, 2], dropout=0.13,
                   embedding_type="fourier", encoder_type="residual", decoder_type="standard",
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
}


def check_full(edm: Path, batch: int = 8, rounds: int = 5) -> None:
    """Full-size google/ddpm-cifar10-32 and EDM CIFAR-10 DDPM++/NCSN++: equality at three noise
    levels, parameter counts, and one network call's time, ours (jitted) and torch's alternated."""
    import time

    import jax
    import jax.numpy as jnp
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    import diffusion_jax as dj
    import diffusion_jax.pretrained as P
    sys.path.insert(0, str(edm))
    from training import networks  # noqa: PLC0415
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from export_edm import export  # noqa: PLC0415
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    cases = []
    tmp = Path(tempfile.mkdtemp())
    unet = UNet2DModel(**DDPM_CIFAR10).eval()
    perturb(unet, 1, scale=0.02)
    sched = DDPMScheduler(clip_sample=True)
    DDPMPipeline(unet, sched).save_pretrained(tmp / "ddpm", safe_serialization=True)
    cases.append(("google/ddpm-cifar10-32", tmp / "ddpm", unet, sched))
    for name, kw in EDM_CIFAR10.items():
        net = networks.EDMPrecond(**kw).eval()
        perturb(net, 2, scale=0.02)
        export(net, "EDMPrecond", kw, tmp / name)
        cases.append((f"EDM CIFAR-10 {name}", tmp / name, net, None))
    x0 = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for label, folder, net, sched in cases:
        pre = P.load_pretrained(folder)
        fn = jax.jit(pre.denoiser)
        torch_params = sum(p.numel() for p in (net.parameters() if sched else net.model.parameters()))
        errs = []
        for level in ((900, 500, 20) if sched else (0.05, 1.0, 20.0)):
            if sched:
                a = float(sched.alphas_cumprod[level]) ** 0.5
                xt = a * x0 + (1 - a * a) ** 0.5 * eps
                t_torch, t_ours = torch.full((batch,), level), (level + 1) / 1000
                with torch.no_grad():
                    e = net(xt, t_torch).sample
                ref = ((xt - (1 - a * a) ** 0.5 * e) / a).clamp(-1, 1)
            else:
                xt = x0 + level * eps
                t_ours = level
                with torch.no_grad():
                    ref = net(xt, torch.full((batch,), level))
            ours = fn(jnp.asarray(nchw_to_nhwc(xt)), jnp.full((batch,), t_ours, jnp.float32))
            ref = nchw_to_nhwc(ref)
            errs.append(float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref))))
        xin = jnp.asarray(nchw_to_nhwc(x0))
        tin = jnp.full((batch,), 0.5, jnp.float32)
        fn(xin, tin).block_until_ready()
        t_j, t_t = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn(xin, tin).block_until_ready()
            t_j.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.no_grad():
                (net(x0, torch.full((batch,), 500)).sample if sched else net(x0, torch.full((batch,), 0.5)))
            t_t.append(time.perf_counter() - t0)
        jm, tm = float(np.median(t_j)), float(np.median(t_t))
        process = pre.process
        run = jax.jit(lambda x: dj.sample(pre.denoiser, process, x, sampler="unipc", num_steps=9))
        run(xin).block_until_ready()
        t_s = []
        for _ in range(3):
            t0 = time.perf_counter()
            run(xin).block_until_ready()
            t_s.append(time.perf_counter() - t0)
        overhead = float(np.median(t_s)) / (10 * jm)
        print(f"{label}: params ours {pre.num_params:,} torch {torch_params:,} (+ buffers we hold "
              f"as parameters: {pre.num_params - torch_params}); max rel error at 3 levels "
              f"{', '.join(f'{e:.1e}' for e in errs)}; one call, batch {batch}: ours {jm * 1e3:.1f} "
              f"ms ({batch / jm:.1f} img/s), torch {tm * 1e3:.1f} ms ({batch / tm:.1f} img/s), "
              f"ratio {tm / jm:.2f}x; UniPC at NFE 10 (one jitted scan): "
              f"{float(np.median(t_s)):.2f} s = {overhead:.3f} x (10 x one call)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edm", required=True, help="a checkout of github.com/NVlabs/edm")
    ap.add_argument("--full", action="store_true", help="check the full-size configs instead")
    args = ap.parse_args()
    if args.full:
        return check_full(Path(args.edm))
    for name, fn in (("ddpm_tiny", ddpm_tiny), ("cd_tiny", cd_tiny), ("vpred_tiny", vpred_tiny),
                     ("fourier_net", fourier_net)):
        shutil.rmtree(OUT / name, ignore_errors=True)
        fn(OUT / name)
        print("wrote", OUT / name)
    for name, (precond, kwargs) in EDM_FIXTURES.items():
        shutil.rmtree(OUT / name, ignore_errors=True)
        edm_fixture(name, precond, kwargs, OUT / name, Path(args.edm))
        print("wrote", OUT / name)


if __name__ == "__main__":
    main()
