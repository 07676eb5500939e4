"""CIFAR-10 at TPU scale with DiT-S/2 (hidden 384, 12 blocks, 6 heads, 256 tokens; ~33M
parameters) class-conditional, bf16 compute, FSDP over the mesh's fsdp axis. DiT-B/2:
--config.model.hidden_size=768 --config.model.num_heads=12.

    python -m diffusion_jax train --config experiments/cifar10_dit.py --workdir gs://BUCKET/c10_dit
"""

from pathlib import Path

from ml_collections import ConfigDict

from diffusion_jax.config import load_config


def get_config() -> ConfigDict:
    c = load_config(str(Path(__file__).with_name("cifar10_ddpmpp.py")))
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data.num_classes = 10
    c.model = ConfigDict(dict(name="dit", patch_size=2, hidden_size=384, depth=12, num_heads=6,
                              mlp_ratio=4.0, dtype="bfloat16", conditional=True, cond_drop=0.1,
                              time_scale=1000.0, remat="dots"))
    c.optimizer.lr = 1e-4
    c.optimizer.warmup_steps = 1000
    c.train.batch_size = 256
    c.sample.guidance = 1.5
    return c
