"""One network call and one whole sampler run of a trained or pretrained model, timed
(``bench-samplers --workdir/--pretrained DIR --speed``), optionally beside the torch peer on the
same weights (``--peer torch``: diffusers' ``UNet2DModel`` read from a diffusers folder),
alternated in one run.

The sampler's overhead is its wall time over NFE x one call: the scan, the grid and the solver's
arithmetic, which should cost next to nothing against the network.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.bench.peer_torch import PeerUnavailable, _import
from diffusion_jax.samplers import steps_for_budget, total_nfe
from diffusion_jax.utils.atomic import write_json, write_text
from diffusion_jax.workdir import load


def timed(fn, rounds: int) -> list[float]:
    """Wall seconds of ``rounds`` calls of ``fn`` (which must block until done)."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def torch_peer(folder: Path, batch: int, shape, t_label: float):
    """A callable running diffusers' U-Net of ``folder`` once on a batch (no grad)."""
    torch = _import()
    from diffusers import UNet2DModel  # noqa: PLC0415 - optional peer
    if not (folder / "model_index.json").is_file():
        raise PeerUnavailable("--peer torch times diffusers folders (an EDM export needs EDM's "
                              "code: scripts/make_pretrained_fixtures.py --full)")
    net = UNet2DModel.from_pretrained(str(folder / "unet")).eval()
    x = torch.randn(batch, shape[-1], shape[0], shape[1])
    t = torch.full((batch,), t_label)

    def call():
        with torch.no_grad():
            net(x, t)
    return call


def network_speed(workdir, out: Path, batch: int = 8, rounds: int = 5, sampler: str = "unipc",
                  nfe: int = 10, peer: str | None = None, log=print) -> dict:
    exp, params, step = load(workdir)
    m = exp.method
    steps = steps_for_budget(sampler, nfe)
    if steps is None or total_nfe(sampler, steps) != nfe:
        raise ValueError(f"--nfe {nfe} is not reachable with {sampler}")
    x = m.process.prior_sample(jax.random.key(0), (batch,) + tuple(m.shape))
    t_mid = 0.5 * (m.process.t_min + m.process.t_max)
    call = jax.jit(lambda p, x: m.model.apply({"params": p}, x, jnp.full((batch,), t_mid)))
    ours = lambda: call(params, x).block_until_ready()
    run = m.sample_fn(sampler, steps)
    whole = lambda: jax.block_until_ready(run(params, x, jax.random.key(1)))
    other = torch_peer(Path(workdir), batch, m.shape, 500.0) if peer == "torch" else None
    ours(), whole()  # compile
    t_ours, t_peer = [], []
    for _ in range(rounds):  # alternated: the machine's load hits both alike
        t_ours += timed(ours, 1)
        if other is not None:
            t_peer += timed(other, 1)
    t_whole = float(np.median(timed(whole, max(2, rounds // 2))))
    one = float(np.median(t_ours))
    row = {"workdir": str(workdir), "checkpoint_step": step, "batch": batch,
           "backend": jax.default_backend(), "one_call_s": one, "img_per_s": batch / one,
           "sampler": sampler, "nfe": nfe, "sampler_s": t_whole,
           "sampler_overhead": t_whole / (nfe * one)}
    if t_peer:
        tp = float(np.median(t_peer))
        row.update(peer="torch (diffusers UNet2DModel)", peer_one_call_s=tp,
                   peer_img_per_s=batch / tp, speedup_vs_peer=tp / one)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "speed.json", row)
    lines = [f"{workdir}, batch {batch}, {jax.default_backend()}: one call {one * 1e3:.1f} ms "
             f"({batch / one:.1f} img/s); {sampler} at NFE {nfe} {t_whole:.2f} s = "
             f"{row['sampler_overhead']:.3f} x NFE x one call"]
    if t_peer:
        lines.append(f"torch (diffusers) one call {row['peer_one_call_s'] * 1e3:.1f} ms "
                     f"({row['peer_img_per_s']:.1f} img/s): ours {row['speedup_vs_peer']:.2f}x")
    write_text(out / "speed.md", "\n".join(lines) + "\n")
    for line in lines:
        log(line)
    return row
