"""Knowledge distillation of the Fashion-MNIST demo model into a smaller U-Net: the student (half
the teacher's channels here; --config.model.channels=4 for a quarter) learns the teacher's
network output on the teacher's noisy inputs. It samples, evaluates, quantises and exports like
any diffusion run.

    python -m diffusion_jax train --config experiments/fashion_mnist_ddpm.py --workdir runs/fm
    python -m diffusion_jax train --config experiments/fashion_mnist_student.py \\
        --workdir runs/student_half --config.student.teacher=runs/fm
    python -m diffusion_jax sample --workdir runs/student_half --sampler unipc --nfe 10
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.method = "student"
    c.seed = 0
    c.mesh = ConfigDict({"data": -1, "fsdp": 1})
    c.data = ConfigDict(dict(dataset="fashion_mnist", data_dir="", image_size=28, channels=1,
                             random_flip=False, num_classes=10))
    c.student = ConfigDict(dict(teacher="runs/fm"))
    c.model = ConfigDict(dict(name="unet", channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                              attn_resolutions=(7,), num_heads=1, dropout=0.0, dtype="float32",
                              conditional=False, time_scale=1000.0))
    c.loss = ConfigDict(dict(weighting="simple", t_sampler="antithetic"))
    c.optimizer = ConfigDict(dict(lr=2e-3, warmup_steps=100, schedule="constant", weight_decay=0.0,
                                  grad_clip=1.0, grad_accum=1, b2=0.99))
    c.train = ConfigDict(dict(steps=1500, batch_size=64, ema_decay=0.995, ema_start=200,
                              log_every=20, ckpt_every=400, sample_every=0, keep=3,
                              time_limit_minutes=0.0, fid_every=0, fid_num=500,
                              fid_classifier="", fid_inception=""))
    c.sample = ConfigDict(dict(sampler="dpmpp_2m", num_steps=20, num=64, grid="default",
                               guidance=None))
    return c
