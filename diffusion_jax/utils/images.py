"""PNG grids of samples and loss-curve plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffusion_jax.utils.atomic import atomic_path
from matplotlib.figure import Figure  # the object API: no pyplot, no backend switch


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
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def plot_curve(steps, values, path: str | Path, ylabel: str = "loss"):
    """``values`` against ``steps`` on a log scale, as a PNG."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(steps, values, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def save_scatter(points, path: str | Path, title: str = ""):
    """Scatter plot of the first two coordinates of ``[N, D]`` samples."""
    p = np.asarray(points)
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5)
    ax.set_aspect("equal")
    ax.set_title(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """A matplotlib figure as a PNG, written whole or not at all."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def load_images(path: str | Path, channels: int) -> np.ndarray:
    """Images from a ``.png``/``.jpg`` (one image) or an ``.npz``/``.npy`` (``images`` [N, H, W, C]
    uint8 in [0, 255] or float in [-1, 1]) as float32 ``[N, H, W, channels]`` in ``[-1, 1]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist" if not path.exists()
                                else f"image file {path} is a folder: give a file")
    x = _read_array(path) if path.suffix in (".npz", ".npy") else _read_picture(path, channels)
    x = x[None] if x.ndim == 3 else x
    x = x.astype(np.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path} holds NaN or infinite values")
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(f"{path}: expected images [N, H, W, {channels}], got shape {x.shape}")
    if x.min() < -1.001 or x.max() > 1.001:
        raise ValueError(f"{path}: float images must be in [-1, 1], got [{x.min():.3g}, "
                         f"{x.max():.3g}]; store uint8 in [0, 255] or rescale with x / 127.5 - 1")
    return x


def _read_array(path: Path) -> np.ndarray:
    """``images`` of an ``.npz`` or the array of an ``.npy`` (never unpickled)."""
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError):
        raise ValueError(f"{path} is not a numpy {path.suffix} file of arrays") from None
    if isinstance(f, np.ndarray):
        return f
    with f:
        if "images" not in f:
            raise ValueError(f"{path} has no 'images' array (found: {list(f.keys())})")
        return f["images"]


def _read_picture(path: Path, channels: int) -> np.ndarray:
    try:
        img = Image.open(path).convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"{path} is not an image PIL can read (.png, .jpg, ...), nor an "
                         ".npz/.npy") from None
    x = np.asarray(img, np.uint8)
    return x[..., None] if x.ndim == 2 else x


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
        if not Path(spec).is_file():
            raise FileNotFoundError(f"mask file {spec} does not exist")
        m = (_read_array(Path(spec)) if spec.endswith(".npy")
             else _read_picture(Path(spec), 1)[..., 0] / 255.0)
        if not np.all(np.isfinite(np.asarray(m, np.float64))):
            raise ValueError(f"mask {spec} holds NaN or infinite values")
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
            with atomic_path(out) as tmp:
                np.save(tmp, images)
        return {}
    if out.suffix == ".npz":
        with atomic_path(out) as tmp:
            np.savez(tmp, images=images, **({"labels": labels} if labels is not None else {}))
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
