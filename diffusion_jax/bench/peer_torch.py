"""The PyTorch peer of ``bench-train --peer torch``: diffusers' ``UNet2DModel`` built to the same
architecture as an experiment's U-Net (same widths, res blocks, attention levels and heads, time
embedding, parameter count up to GroupNorm group sizes), trained with the same batch, the same
denoising loss (eps-MSE on a VP process) and Adam, on the same number of CPU threads.

torch and diffusers are never dependencies of this package; install them to use this:

    pip install torch --index-url https://download.pytorch.org/whl/cpu && pip install diffusers
"""

from __future__ import annotations

import os
import time

INSTALL_HINT = ("pip install torch --index-url https://download.pytorch.org/whl/cpu && "
                "pip install diffusers")


class PeerUnavailable(ValueError):
    """torch / diffusers missing: the message says how to install them (the CLI prints it and
    exits 2)."""


def _import():
    try:
        import diffusers  # noqa: F401
        import torch
    except ImportError as e:
        raise PeerUnavailable(f"bench-train --peer torch needs torch and diffusers ({e.name} is "
                              f"not installed): {INSTALL_HINT}") from None
    return torch


def unet2d_kwargs(ucfg, image_size: int, channels: int) -> dict:
    """diffusers ``UNet2DModel`` arguments matching our ``UNetConfig`` (see models/unet.py)."""
    widths = tuple(ucfg.channels * m for m in ucfg.channel_mult)
    res, down, up = image_size, [], []
    for level in range(len(widths)):
        down.append("AttnDownBlock2D" if res in ucfg.attn_resolutions else "DownBlock2D")
        if level < len(widths) - 1:
            res //= 2
    for level in reversed(range(len(widths))):
        r = image_size // 2 ** level
        up.append("AttnUpBlock2D" if r in ucfg.attn_resolutions else "UpBlock2D")
    deepest = widths[-1]
    if deepest % ucfg.num_heads:
        raise ValueError(f"the deepest width {deepest} is not divisible by num_heads "
                         f"{ucfg.num_heads}")
    return dict(sample_size=image_size, in_channels=channels, out_channels=channels,
                block_out_channels=widths, layers_per_block=ucfg.num_res_blocks,
                down_block_types=tuple(down), up_block_types=tuple(up),
                attention_head_dim=deepest // ucfg.num_heads,
                norm_num_groups=min(32, ucfg.channels // 4) or 1, flip_sin_to_cos=True,
                freq_shift=0, dropout=ucfg.dropout)


class TorchPeer:
    """One diffusers U-Net and its Adam train step on a fixed batch."""

    def __init__(self, ucfg, image_size: int, channels: int, batch: int, lr: float = 2e-4,
                 threads: int | None = None):
        torch = _import()
        from diffusers import UNet2DModel
        from torch.utils.flop_counter import FlopCounterMode

        self.torch = torch
        torch.manual_seed(0)
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.model = UNet2DModel(**unet2d_kwargs(ucfg, image_size, channels))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.batch = batch
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, channels, image_size, image_size, generator=g)
        self.noise = torch.randn(batch, channels, image_size, image_size, generator=g)
        self.t = torch.rand(batch, generator=g)
        with FlopCounterMode(display=False) as fc:  # convs + matmuls of forward and backward
            self.step()
        self.flops_per_step = fc.get_total_flops()

    def step(self) -> float:
        torch = self.torch
        a = torch.cos(0.5 * torch.pi * self.t).view(-1, 1, 1, 1)
        s = torch.sin(0.5 * torch.pi * self.t).view(-1, 1, 1, 1)
        xt = a * self.x + s * self.noise
        pred = self.model(xt, 1000.0 * self.t).sample
        loss = torch.mean((pred - self.noise) ** 2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def time_steps(self, n: int) -> float:
        """Seconds per step, mean of ``n`` steps."""
        t0 = time.perf_counter()
        for _ in range(n):
            self.step()
        return (time.perf_counter() - t0) / n

    def profile(self, n: int = 3) -> dict[str, float]:
        """Seconds per step by op category (``OP_CATEGORIES``), from torch.profiler's self CPU
        time of every aten op over ``n`` steps (an op's own time, its children's excluded)."""
        from torch.profiler import ProfilerActivity, profile

        self.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                self.step()
        out: dict[str, float] = {}
        for ev in prof.key_averages():
            cat = op_category(ev.key)
            out[cat] = out.get(cat, 0.0) + ev.self_cpu_time_total / 1e6 / n
        return out

    def matmul_gflops(self, n: int = 2048, repeats: int = 10) -> float:
        torch = self.torch
        a = torch.randn(n, n)
        a @ a
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ a
        return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


# aten op name fragments -> the categories ``scripts/profile_train_step.py`` prints beside XLA's
OP_CATEGORIES = (
    ("convolution_backward", "conv backward (input + weight gradients)"),
    ("convolution", "conv forward"),
    ("group_norm", "group norm (forward and backward)"),
    ("native_layer_norm", "group norm (forward and backward)"),
    ("scaled_dot_product", "matmul (dense, attention)"),
    ("mm", "matmul (dense, attention)"),           # mm, addmm, bmm, baddbmm
    ("matmul", "matmul (dense, attention)"),
    ("linear", "matmul (dense, attention)"),
    ("_foreach", "optimizer (Adam)"),
    ("adam", "optimizer (Adam)"),
    ("copy_", "transpose / copy"),
    ("contiguous", "transpose / copy"),
    ("clone", "transpose / copy"),
    ("sum", "reduction (sums, means)"),
    ("mean", "reduction (sums, means)"),
)


def op_category(name: str) -> str:
    """The category of a torch.profiler event: aten ops by name; the autograd engine's and the
    optimizer's wrapper events (their own time only) as framework overhead."""
    low = name.lower()
    if low.startswith("autograd::") or low.startswith("optimizer.zero_grad"):
        return "framework overhead"
    for fragment, category in OP_CATEGORIES:
        if fragment in low:
            return category
    return "elementwise / other"
