"""Fine-tune Stable Diffusion 1.5 (or 2.x, or any StableDiffusionPipeline folder) on image/caption
pairs: the U-Net trains from the folder's weights on the epsilon objective it was trained with;
the VAE and the CLIP text encoder stay frozen (images are encoded, captions tokenized on the host
and encoded, inside each step); captions are dropped to the empty prompt with probability
``model.cond_drop`` so classifier-free guidance keeps working. Resumes exactly, as every run.

    # a folder of images with metadata.jsonl: {"file_name": "0001.png", "text": "a red dress"}
    python -m diffusion_jax train --config experiments/sd15_finetune.py --workdir runs/sd-ft \\
        --config.init_from=stable-diffusion-v1-5 --config.data.dataset=captions:my_pairs
    python -m diffusion_jax sample --workdir runs/sd-ft --prompt "a red dress" \\
        --sampler dpmpp_2m --nfe 25 --out dress.png

The data may also be an ``.npz`` with ``images`` (uint8, 512x512x3) and ``captions`` (strings).
A U-Net of 860M parameters with AdamW and an EMA needs ~14 GB of state: shard it over the
devices with ``--config.mesh.fsdp=-1 --config.mesh.data=1`` (``fsdp=8`` on a v5e-8 / 8 GPUs).
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "diffusion"
    c.seed = 0
    c.init_from = "stable-diffusion-v1-5"   # a local StableDiffusionPipeline folder
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="captions:pairs", data_dir="", image_size=512, channels=3,
                             random_flip=True, num_classes=0))
    c.model = ConfigDict(dict(cond_drop=0.1))  # the folder's U-Net; captions dropped for CFG
    c.loss = ConfigDict(dict(weighting="eps", t_sampler="uniform"))  # SD's own objective
    c.optimizer = ConfigDict(dict(lr=1e-5, warmup_steps=100, schedule="constant",
                                  weight_decay=1e-2, grad_clip=1.0, grad_accum=1, b2=0.999))
    c.train = ConfigDict(dict(steps=2000, batch_size=8, ema_decay=0.9999, ema_start=0,
                              log_every=10, ckpt_every=250, sample_every=0, keep=2,
                              time_limit_minutes=0.0, fid_every=0, fid_num=500,
                              fid_classifier="", fid_inception=""))
    c.sample = ConfigDict(dict(sampler="dpmpp_2m", num_steps=24, num=4, grid="default",
                               guidance=7.5,
                               prompts=()))  # the training previews' prompts
    return c
