"""Compression-aware fine-tuning of the Fashion-MNIST demo model: quantisation-aware training for
int4 weights (the setting where post-training quantisation loses the most), from the trained run.
The loss sees every conv/dense kernel rounded to int4 per output channel as ``sample --quantize
int4`` rounds it (straight-through gradients); sample the result with ``--quantize int4``.
``--config.compress.quantize='' --config.compress.prune=0.8`` fine-tunes for 80% magnitude
pruning instead (``sample --prune 0.8``).

    python -m diffusion_jax train --config experiments/fashion_mnist_ddpm.py --workdir runs/fm
    python -m diffusion_jax train --config experiments/fashion_mnist_qat.py --workdir runs/fm_qat4 \\
        --config.init_from=runs/fm
    python -m diffusion_jax sample --workdir runs/fm_qat4 --quantize int4 --sampler unipc --nfe 10
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "diffusion"
    c.seed = 0
    c.init_from = "runs/fm"            # the trained run: its network, process and weights
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="fashion_mnist", data_dir="", image_size=28, channels=1,
                             random_flip=False, num_classes=10))
    c.compress = ConfigDict(dict(quantize="int4", prune=0.0))
    c.loss = ConfigDict(dict(weighting="simple", t_sampler="antithetic"))
    c.optimizer = ConfigDict(dict(lr=2e-4, warmup_steps=20, schedule="constant", weight_decay=0.0,
                                  grad_clip=1.0, grad_accum=1, b2=0.99))
    c.train = ConfigDict(dict(steps=400, batch_size=64, ema_decay=0.99, ema_start=0,
                              log_every=20, ckpt_every=200, sample_every=0, keep=2,
                              time_limit_minutes=0.0, fid_every=0, fid_num=500,
                              fid_classifier="", fid_inception=""))
    c.sample = ConfigDict(dict(sampler="unipc", num_steps=9, num=64, grid="default",
                               guidance=None))
    return c
