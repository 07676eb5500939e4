"""Make the latent-pipeline fixtures of tests/test_latent_pipelines.py from the reference
implementations (diffusers and transformers from pip, torch on the CPU).

Each fixture is a tiny pipeline in the real on-disk layout (``save_pretrained``, safetensors) with
random weights (every parameter perturbed, so zero-initialised layers are not zero; stored as
float16 and the references computed from exactly those rounded weights), a tiny CLIP vocabulary
(``vocab.json`` + ``merges.txt``: the 512 byte symbols and merges learned here from a few
sentences), and ``reference.npz``: inputs and the reference's outputs per component, and a whole
pipeline run (DDIM, 10 steps, classifier-free guidance) with its noise. The suite reads them
without torch.

    sd15_tiny   StableDiffusionPipeline: UNet2DConditionModel (conv projections, one head
                count), AutoencoderKL, CLIPTextModel (quick_gelu), CLIPTokenizer, DDIM (epsilon)
    sd21_tiny   the SD 2.x variants: linear projections, a head count per block, upcast
                attention, v-prediction, a gelu text encoder padded with "!"
    dit_tiny    DiTPipeline: DiTTransformer2DModel (adaLN-Zero, learned sigma), AutoencoderKL
    ldm_tiny    LDMPipeline (CompVis/ldm-celebahq-256's layout): VQModel + UNet2DModel

Regenerate (from the repository root):

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 diffusers transformers \
        safetensors tokenizers -e .
    /tmp/ref/bin/python scripts/make_latent_fixtures.py

``--full`` instead builds the full-size SD 1.5, SD 2.1 and DiT-XL/2 configurations with random
weights in torch and in our modules and prints both parameter counts (nothing written).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_pretrained_fixtures import f16_safetensors, nchw_to_nhwc, perturb  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "latent"

CORPUS = ("a photo of a cat sitting on a red chair . an astronaut riding a horse on the moon , "
          "digital art . a painting of a lighthouse in a storm by the sea . the quick brown fox "
          "jumps over the lazy dog ! portrait of an old man , oil on canvas , highly detailed")

# 30 prompts: empty, unicode, emoji, numbers, punctuation, contractions, special tokens in the
# text, runs of whitespace, and three longer than the 77-token window
PROMPTS = [
    "", "a photo of a cat", "A PHOTO OF A CAT", "an astronaut riding a horse on the moon",
    "digital art, trending on artstation", "café au lait, crème brûlée", "naïve façade déjà vu",
    "東京の夜景", "Привет мир", "🐱🚀 a cat in a rocket 🌕", "it's the dog's bone, isn't it?",
    "I'm sure we'll see, they've said, you'd know", "1234567890 and 3.14159", "   spaces   and\ttabs\n",
    "hello<|endoftext|>world", "<|startoftext|>begin", "UPPER lower MiXeD", "!!!???...,,,",
    "a red chair; a blue chair: a green chair", "(masterpiece:1.2), [detailed], {sharp}",
    "e-mail me at someone@example.com", "c'est la vie", "ß ü ö ä Ω ≈ ∞",
    "Zürich Straße", "a\u00a0non-breaking\u2003space", "Ａ ｆｕｌｌ－ｗｉｄｔｈ",
    " ".join(["a photo of a cat"] * 20),
    " ".join(["the quick brown fox jumps over the lazy dog"] * 10),
    "word " * 100,
    "a dog " + "🐶" * 40,
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_vocab(folder: Path, merges: int = 120, pad: str = "<|endoftext|>") -> int:
    """CLIP's vocabulary layout on a small scale: the 256 byte symbols, the same with ``</w>``,
    ``merges`` BPE merges learned greedily from ``CORPUS``, then the two special tokens."""
    b2u = bytes_to_unicode()
    vocab = list(b2u.values())
    vocab += [v + "</w>" for v in vocab]
    words = collections.Counter(re.findall(r"[a-z]+|[^\sa-z]+", CORPUS.lower()))
    seqs = {w: [b2u[b] for b in w.encode()][:-1] + [b2u[w.encode()[-1]] + "</w>"] for w in words}
    rules = []
    for _ in range(merges):
        pairs = collections.Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[a, b] += words[w]
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        rules.append((a, b))
        vocab.append(a + b)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)},
                                                  ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in rules)
                                       + "\n")
    return len(vocab)


def tokenizer(folder: Path, pad: str):
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                        pad_token=pad, model_max_length=77)
    return tok


def text_encoder(vocab: int, act: str, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                         hidden_act=act, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                         pad_token_id=vocab - 1)
    torch.manual_seed(seed)
    enc = CLIPTextModel(cfg).eval()
    perturb(enc, seed, scale=0.1)
    return enc


def vae(seed: int):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    m = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16),
                      down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                      latent_channels=4, norm_num_groups=4, sample_size=16,
                      scaling_factor=0.5).eval()
    perturb(m, seed, scale=0.05)
    return m


def cond_unet(seed: int, sd2: bool):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    m = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        cross_attention_dim=32, norm_num_groups=4,
        attention_head_dim=(2, 4) if sd2 else 2, use_linear_projection=sd2,
        upcast_attention=sd2).eval()
    perturb(m, seed, scale=0.05)
    return m


def save_f16(folder: Path) -> None:
    for f in folder.rglob("*.safetensors"):
        f16_safetensors(f)


def component_refs(pipe, prefix: str, seed: int) -> dict:
    """Each component alone, on fixed inputs."""
    g = torch.Generator().manual_seed(seed)
    ref = {}
    if getattr(pipe, "vae", None) is not None:
        img = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
        z = torch.randn(2, 4, 8, 8, generator=g)
        with torch.no_grad():
            ref["vae_mean"] = nchw_to_nhwc(pipe.vae.encode(img).latent_dist.mean)
            ref["vae_decoded"] = nchw_to_nhwc(pipe.vae.decode(z).sample)
        ref["vae_images"], ref["vae_latents"] = nchw_to_nhwc(img), nchw_to_nhwc(z)
    if getattr(pipe, "text_encoder", None) is not None:
        ids = torch.tensor(pipe.tokenizer(PROMPTS[1:4], padding="max_length", max_length=77,
                                          truncation=True).input_ids)
        with torch.no_grad():
            ref["text_hidden"] = pipe.text_encoder(ids)[0].numpy()
        ref["text_ids"] = ids.numpy().astype(np.int32)
        ref["prompts_ids"] = np.asarray(pipe.tokenizer(PROMPTS, padding="max_length",
                                                       max_length=77, truncation=True).input_ids,
                                        np.int32)
    return ref


def sd(out: Path, sd2: bool) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    pad = "!" if sd2 else "<|endoftext|>"
    n_vocab = tiny_vocab(out / "tokenizer", pad=pad)
    tok = tokenizer(out / "tokenizer", pad)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                          prediction_type="v_prediction" if sd2 else "epsilon")
    pipe = StableDiffusionPipeline(
        vae=vae(11), text_encoder=text_encoder(n_vocab, "gelu" if sd2 else "quick_gelu", 12),
        tokenizer=tok, unet=cond_unet(13, sd2), scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    save_f16(out)
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ref = component_refs(pipe, "", 21)
    g = torch.Generator().manual_seed(22)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 5, 32, generator=g)
    t = torch.tensor([999, 250])
    with torch.no_grad():
        ref["unet_out"] = nchw_to_nhwc(pipe.unet(x, t, ctx).sample)
    ref.update(unet_x=nchw_to_nhwc(x), unet_t=t.numpy(), unet_context=ctx.numpy())
    # the whole pipeline: two prompts, a negative prompt, guidance 7.5, DDIM 10 steps
    prompts, negative = ["a photo of a cat", "an astronaut riding a horse"], "blurry"
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(23))
    kw = dict(prompt=prompts, negative_prompt=[negative] * 2, num_inference_steps=10,
              guidance_scale=7.5, eta=0.0, latents=latents.clone(), height=16, width=16)
    final = pipe(**kw, output_type="latent").images
    image = pipe(**kw, output_type="np").images
    ref.update(pipe_noise=nchw_to_nhwc(latents), pipe_latents=nchw_to_nhwc(final),
               pipe_images=np.asarray(image, np.float32))
    np.savez(out / "reference.npz", **ref)
    (out / "prompts.json").write_text(json.dumps({"prompts": PROMPTS, "pipe_prompts": prompts,
                                                  "negative": negative}, ensure_ascii=False))


def dit(out: Path) -> None:
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel
    torch.manual_seed(31)
    tr = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                               out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                               num_embeds_ada_norm=1000).eval()  # the pipeline's null class is 1000
    perturb(tr, 31, scale=0.05)
    sched = DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          clip_sample=False)
    pipe = DiTPipeline(transformer=tr, vae=vae(32), scheduler=sched)
    pipe.save_pretrained(out, safe_serialization=True)
    save_f16(out)
    pipe = DiTPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    ref = component_refs(pipe, "", 33)
    g = torch.Generator().manual_seed(34)
    x = torch.randn(3, 4, 8, 8, generator=g)
    t, y = torch.tensor([999, 500, 3]), torch.tensor([1, 7, 1000])  # 1000: the null class
    with torch.no_grad():
        ref["net_out"] = nchw_to_nhwc(pipe.transformer(x, timestep=t, class_labels=y).sample)
    ref.update(net_x=nchw_to_nhwc(x), net_t=t.numpy(), net_y=y.numpy())
    labels = [1, 7]
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(35))
    image = pipe(class_labels=labels, guidance_scale=4.0, num_inference_steps=10,
                 generator=torch.Generator().manual_seed(35), output_type="np").images
    ref.update(pipe_noise=nchw_to_nhwc(noise), pipe_labels=np.array(labels),
               pipe_images=np.asarray(image, np.float32))
    np.savez(out / "reference.npz", **ref)


def ldm(out: Path) -> None:
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel
    torch.manual_seed(41)
    vq = VQModel(in_channels=3, out_channels=3, block_out_channels=(8, 16),
                 down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=3,
                 norm_num_groups=4, num_vq_embeddings=32, sample_size=16).eval()
    perturb(vq, 41, scale=0.05)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                       norm_num_groups=4, attention_head_dim=8).eval()
    perturb(unet, 42, scale=0.05)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                          clip_sample=False)
    pipe = LDMPipeline(vqvae=vq, unet=unet, scheduler=sched)
    pipe.save_pretrained(out, safe_serialization=True)
    save_f16(out)
    pipe = LDMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(43)
    img = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    h = torch.randn(2, 3, 8, 8, generator=g)
    with torch.no_grad():
        enc = pipe.vqvae.encode(img).latents
        dec = pipe.vqvae.decode(h).sample
    ref = dict(vq_images=nchw_to_nhwc(img), vq_encoded=nchw_to_nhwc(enc), vq_latents=nchw_to_nhwc(h),
               vq_decoded=nchw_to_nhwc(dec))
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(44))
    image = pipe(batch_size=2, generator=torch.Generator().manual_seed(44), num_inference_steps=10,
                 eta=0.0, output_type="np").images
    ref.update(pipe_noise=nchw_to_nhwc(noise), pipe_images=np.asarray(image, np.float32))
    np.savez(out / "reference.npz", **ref)


def full() -> None:
    """Parameter counts of the full-size configurations, torch vs ours (random weights)."""
    import jax
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusion_jax.pretrained import components
    sizes = {
        "SD 1.5 U-Net": (UNet2DConditionModel, dict(cross_attention_dim=768, sample_size=64,
                                                     attention_head_dim=8)),
        "SD 2.1 U-Net": (UNet2DConditionModel, dict(cross_attention_dim=1024,
                                                     attention_head_dim=(5, 10, 20, 20),
                                                     use_linear_projection=True,
                                                     upcast_attention=True, sample_size=96)),
        "DiT-XL/2 transformer": (DiTTransformer2DModel, dict(out_channels=8)),
    }
    tmp = Path("/tmp/dj_full_configs")
    for name, (cls, kw) in sizes.items():
        with torch.device("meta"):
            m = cls(**kw)
        n_torch = sum(p.numel() for p in m.parameters())
        folder = tmp / name.replace(" ", "_").replace("/", "")
        m.save_config(folder)
        kind = "transformer" if "DiT" in name else "unet"
        names = [None]
        if kind == "transformer":  # the hub folder's name for the same model
            names.append("Transformer2DModel")
        for cls_name in names:
            if cls_name:
                raw = json.loads((folder / "config.json").read_text())
                (folder / "config.json").write_text(json.dumps({**raw, "_class_name": cls_name}))
            ours = components.component(folder, kind)
            abstract = components.abstract_params(ours, *components.example_inputs(ours))
            n_ours = sum(x.size for x in jax.tree_util.tree_leaves(abstract))
            print(f"{name}{' as ' + cls_name if cls_name else ''}: torch {n_torch:,} "
                  f"parameters, ours {n_ours:,}")
    for name, kw in {"SD 1.5 text encoder (ViT-L/14)": dict(),
                     "SD 2.1 text encoder (OpenCLIP-H, 23 layers)": dict(
                         hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                         num_attention_heads=16, hidden_act="gelu", projection_dim=1024)}.items():
        cfg = CLIPTextConfig(**kw)
        with torch.device("meta"):
            m = CLIPTextModel(cfg)
        folder = tmp / "text"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({**cfg.to_dict(),
                                                        "architectures": ["CLIPTextModel"]}))
        ours = components.component(folder, "text_encoder")
        abstract = components.abstract_params(ours, *components.example_inputs(ours))
        n_ours = sum(x.size for x in jax.tree_util.tree_leaves(abstract))
        print(f"{name}: torch {sum(p.numel() for p in m.parameters()):,} parameters, "
              f"ours {n_ours:,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated fixture names")
    args = ap.parse_args()
    if args.full:
        full()
        return
    makers = {"sd15_tiny": lambda o: sd(o, False), "sd21_tiny": lambda o: sd(o, True),
              "dit_tiny": dit, "ldm_tiny": ldm}
    for name, make in makers.items():
        if args.only and name not in args.only.split(","):
            continue
        out = OUT / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        make(out)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"{out}: {size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
