"""PNG grids of samples and loss-curve plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
    x = np.asarray(images, np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_grid(images, path: str | Path, nrow: int | None = None, pad: int = 2, scale: int = 2):
    """Save ``[N, H, W, C]`` images in ``[-1, 1]`` as one PNG grid."""
    x = to_uint8(images)
    n, h, w, c = x.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def plot_curve(steps, values, path: str | Path, ylabel: str = "loss"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, values, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_scatter(points, path: str | Path, title: str = ""):
    """Scatter plot of the first two coordinates of ``[N, D]`` samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = np.asarray(points)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5)
    ax.set_aspect("equal")
    ax.set_title(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def load_images(path: str | Path, channels: int) -> np.ndarray:
    """Images from a ``.png``/``.jpg`` (one image) or an ``.npz``/``.npy`` (``images`` [N, H, W, C]
    uint8 in [0, 255] or float in [-1, 1]) as float32 ``[N, H, W, channels]`` in ``[-1, 1]``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {path} does not exist")
    if path.suffix in (".npz", ".npy"):
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                if "images" not in f:
                    raise ValueError(f"{path} has no 'images' array (found: {list(f.keys())})")
                x = f["images"]
        else:
            x = np.load(path, allow_pickle=False)
        x = x[None] if x.ndim == 3 else x
        x = x.astype(np.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float32)
    else:
        img = Image.open(path).convert("L" if channels == 1 else "RGB")
        x = np.asarray(img, np.float32)[None] / 127.5 - 1.0
        x = x[..., None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(f"{path}: expected images [N, H, W, {channels}], got shape {x.shape}")
    if x.min() < -1.001 or x.max() > 1.001:
        raise ValueError(f"{path}: float images must be in [-1, 1], got [{x.min():.3g}, "
                         f"{x.max():.3g}]; store uint8 in [0, 255] or rescale with x / 127.5 - 1")
    return x


MASKS = ("center", "left", "right", "top", "bottom", "random")


def make_mask(spec: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A known-pixel mask (1 = keep) ``[H, W, 1]``: a named region that is *unknown* (``center``:
    the middle half square; ``left``/``right``/``top``/``bottom``: that half; ``random``: 75% of
    pixels) or a file (white = known; ``.png``, or ``.npy`` of 0/1)."""
    h, w = shape[:2]
    m = np.ones((h, w, 1), np.float32)
    if spec == "center":
        m[h // 4: h - h // 4, w // 4: w - w // 4] = 0
    elif spec == "left":
        m[:, : w // 2] = 0
    elif spec == "right":
        m[:, w // 2:] = 0
    elif spec == "top":
        m[: h // 2] = 0
    elif spec == "bottom":
        m[h // 2:] = 0
    elif spec == "random":
        m = (np.random.default_rng(seed).random((h, w, 1)) > 0.75).astype(np.float32)
    elif Path(spec).suffix in (".png", ".npy"):
        if not Path(spec).exists():
            raise FileNotFoundError(f"mask file {spec} does not exist")
        m = (np.load(spec) if spec.endswith(".npy")
             else np.asarray(Image.open(spec).convert("L"), np.float32) / 255.0)
        m = (np.asarray(m, np.float32) > 0.5).astype(np.float32)
        m = m[..., None] if m.ndim == 2 else m
    else:
        raise ValueError(f"unknown mask {spec!r}; valid: {', '.join(MASKS)}, or a .png/.npy file")
    return m


def save_output(out: str | Path, images, inputs=None, nrow: int | None = None,
                labels=None) -> dict:
    """Write samples as ``.npz`` (float32 ``images`` and ``labels``), ``.npy`` or as a PNG grid (a scatter
    plot for vectors), plus ``<stem>_input.png`` showing the inputs; returns what was written."""
    out = Path(out)
    if out.suffix == ".npy":
        if not isinstance(images, np.memmap):  # generate() streams into the file itself
            np.save(out, images)
        return {}
    if out.suffix == ".npz":
        np.savez(out, images=images, **({"labels": labels} if labels is not None else {}))
        return {}
    if images.ndim == 2:
        save_scatter(images, out)
        return {}
    save_grid(images, out, nrow=nrow)
    if inputs is None:
        return {}
    path = out.with_name(out.stem + "_input.png")
    save_grid(inputs, path, nrow=nrow)
    return {"inputs": str(path)}
