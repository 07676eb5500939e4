"""Per-call time of the full-size Stable Diffusion 1.5 U-Net (859.5M parameters, random
weights; latent 64x64, 77-token context) and of its VAE decoder (latent 64x64 -> 512x512):
ours (jitted, float32) against diffusers on torch (CPU, float32, no_grad), alternated.

Batch 1 and 2 of images with classifier-free guidance: the U-Net sees 2 and 4 rows (the prompt
and the negative prompt in one call, as both pipelines run it). Needs torch, diffusers and this
package; nothing is downloaded (the torch model is built from the SD 1.5 config and saved as
safetensors, which our loader reads).

    python scripts/bench_sd_speed.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--skip-vae", action="store_true")
    args = ap.parse_args()
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from diffusion_jax.bench.network_speed import timed
    from diffusion_jax.models.autoencoders import AutoencoderKL as OurVAE
    from diffusion_jax.pretrained import components
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    ours = components.component(tmp / "unet", "unet")
    params = jax.device_put(components.load_params(ours, tmp / "unet", "unet",
                                                   *components.example_inputs(ours)))
    n = sum(p.numel() for p in unet.parameters())
    rows = {"torch": torch.__version__, "jax": jax.__version__, "threads": torch.get_num_threads(),
            "unet_params": n}
    fwd = jax.jit(lambda p, x, t, c: ours.apply({"params": p}, x, t, c))
    for b in map(int, args.batches.split(",")):
        rows_b = 2 * b  # classifier-free guidance: prompt + negative prompt in one call
        x = np.random.default_rng(0).standard_normal((rows_b, 64, 64, 4)).astype(np.float32)
        c = np.random.default_rng(1).standard_normal((rows_b, 77, 768)).astype(np.float32)
        t = np.full((rows_b,), 500.0, np.float32)
        xt, ct, tt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(c), \
            torch.from_numpy(t)
        t0 = time.perf_counter()
        fwd(params, x, t, c).block_until_ready()
        compile_s = time.perf_counter() - t0
        with torch.no_grad():
            unet(xt, tt, ct)  # warm-up
        ours_s, torch_s = [], []
        for _ in range(args.rounds):  # alternated
            ours_s += timed(lambda: fwd(params, x, t, c).block_until_ready(), 1)
            with torch.no_grad():
                torch_s += timed(lambda: unet(xt, tt, ct), 1)
        with torch.no_grad():
            diff = float(np.max(np.abs(np.asarray(fwd(params, x, t, c)) -
                                       unet(xt, tt, ct).sample.permute(0, 2, 3, 1).numpy())))
        rows[f"unet_batch{b}_cfg"] = dict(rows=rows_b, ours_s=ours_s, torch_s=torch_s,
                                          ours_median=float(np.median(ours_s)),
                                          torch_median=float(np.median(torch_s)),
                                          speed_ratio=float(np.median(torch_s) / np.median(ours_s)),
                                          compile_s=compile_s, max_abs_diff=diff)
        print(json.dumps({f"unet_batch{b}_cfg": rows[f"unet_batch{b}_cfg"]}), flush=True)
    del unet
    if not args.skip_vae:
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512),
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                            latent_channels=4, sample_size=512).eval()
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        ov = components.component(tmp / "vae", "vae")
        vp = jax.device_put(components.load_params(ov, tmp / "vae", "vae",
                                                   *components.example_inputs(ov)))
        dec = jax.jit(lambda p, z: ov.apply({"params": p}, z, method=OurVAE.decode))
        z = np.random.default_rng(2).standard_normal((1, 64, 64, 4)).astype(np.float32)
        zt = torch.from_numpy(z).permute(0, 3, 1, 2).contiguous()
        t0 = time.perf_counter()
        dec(vp, z).block_until_ready()
        compile_s = time.perf_counter() - t0
        with torch.no_grad():
            vae.decode(zt)
        ours_s, torch_s = [], []
        for _ in range(args.rounds):
            ours_s += timed(lambda: dec(vp, z).block_until_ready(), 1)
            with torch.no_grad():
                torch_s += timed(lambda: vae.decode(zt), 1)
        rows["vae_decode_batch1"] = dict(ours_s=ours_s, torch_s=torch_s,
                                         ours_median=float(np.median(ours_s)),
                                         torch_median=float(np.median(torch_s)),
                                         speed_ratio=float(np.median(torch_s) / np.median(ours_s)),
                                         compile_s=compile_s)
        print(json.dumps({"vae_decode_batch1": rows["vae_decode_batch1"]}), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
