"""Data sources: random-access sequences of ``{"image": uint8 [H, W, C], "label": int}``
(or ``{"x": float32 [D]}`` for synthetic mixtures) that grain pipelines read by index.

* ``fashion_mnist``: the IDX files TFDS downloads, read with numpy from ``data_dir`` (default:
  ``$FASHION_MNIST_DIR`` or the Debian package's ``/usr/share/datasets/fashion-mnist``);
* ``tfds:NAME``: any TFDS dataset prepared as ArrayRecord, through ``tfds.data_source``;
* ``npz:PATH``: an ``.npz`` with ``images`` uint8 [N, H, W, C] (and optional ``labels``, and
  ``captions``: N strings, for text-to-image fine-tuning);
* ``captions:FOLDER``: image/caption pairs as Hugging Face's ``imagefolder`` lays them out: a
  ``metadata.jsonl`` of ``{"file_name": "a.png", "text": "a photo of ..."}`` lines beside the
  images, each resized (shorter side) and centre-cropped to the experiment's size when read;
* ``gmm:ring`` / ``gmm:gmm64``: draws from an exact-score Gaussian mixture
  (``diffusion_jax.gmm``), float vectors already in data space.
"""

from __future__ import annotations

import difflib
import gzip
import os
from pathlib import Path

import jax
import numpy as np

from diffusion_jax import gmm

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


class ArraySource:
    """A random-access source over in-memory arrays (grain's ``RandomAccessDataSource``);
    examples carry ``caption`` where ``captions`` are given."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None,
                 captions: np.ndarray | None = None):
        self.images = images
        self.labels = np.zeros(len(images), np.int32) if labels is None else labels.astype(np.int32)
        self.captions = captions

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        ex = {"image": self.images[i], "label": self.labels[i]}
        if self.captions is not None:
            ex["caption"] = str(self.captions[i])
        return ex


class CaptionFolder:
    """Image/caption pairs of a folder with ``metadata.jsonl`` (``file_name``, ``text``), read
    lazily; ``size`` > 0 resizes the shorter side to ``size`` and centre-crops (RGB)."""

    def __init__(self, folder: str, size: int = 0):
        import json

        root = Path(folder)
        meta = root / "metadata.jsonl"
        if not meta.is_file():
            raise ValueError(f"captions:{folder} has no metadata.jsonl: write one line "
                             '{"file_name": "a.png", "text": "its caption"} per image')
        self.root, self.size, self.files, self.texts = root, size, [], []
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name, text = row["file_name"], row["text"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{meta}:{n} is not a JSON object with 'file_name' and 'text'"
                                 ) from None
            if not isinstance(text, str) or not (root / name).is_file():
                raise ValueError(f"{meta}:{n}: " + (f"{root / name} does not exist"
                                                     if isinstance(text, str) else
                                                     "'text' must be a string"))
            self.files.append(name)
            self.texts.append(text)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.root / self.files[i]) as im:
            im = im.convert("RGB")
            if self.size:
                w, h = im.size
                s = self.size / min(w, h)
                im = im.resize((max(self.size, round(w * s)), max(self.size, round(h * s))),
                               Image.Resampling.BICUBIC)
                w, h = im.size
                left, top = (w - self.size) // 2, (h - self.size) // 2
                im = im.crop((left, top, left + self.size, top + self.size))
            return {"image": np.asarray(im, np.uint8), "label": np.int32(0),
                    "caption": self.texts[i]}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_fashion_mnist(data_dir: str | None = None) -> Path:
    candidates = [data_dir] if data_dir else [os.environ.get("FASHION_MNIST_DIR"), *FASHION_MNIST_DIRS]
    for c in filter(None, candidates):
        if all((Path(c) / f).exists() for f in _FILES["train"] + _FILES["test"]):
            return Path(c)
    raise FileNotFoundError(
        "Fashion-MNIST not found (looked in: " + ", ".join(filter(None, candidates)) + "). "
        "Either install the Debian package (`apt-get install dataset-fashion-mnist`, as root), or "
        "fetch the four IDX .gz files TFDS also uses (the README's 'Fashion-MNIST without the "
        "Debian package' has the commands) into a folder and pass --config.data.data_dir=FOLDER or "
        "set FASHION_MNIST_DIR; or use --config.data.dataset=tfds:fashion_mnist once TFDS has "
        "prepared it (tfds build fashion_mnist).")


def fashion_mnist(split: str = "train", data_dir: str | None = None) -> ArraySource:
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = find_fashion_mnist(data_dir)
    images = _read_idx(root / _FILES[split][0])[..., None]
    labels = _read_idx(root / _FILES[split][1])
    return ArraySource(images, labels)


def npz_source(path: str) -> ArraySource:
    """``images`` (uint8 ``[N, H, W, C]``) and optional ``labels`` (``N`` integers) of an
    ``.npz`` archive (``numpy.savez``); never unpickled."""
    if Path(path).is_dir():
        raise ValueError(f"npz:{path} is a folder: give an .npz file (numpy.savez)")
    not_npz = ValueError(f"npz:{path} is not an .npz archive of arrays (write one with "
                         "numpy.savez(path, images=..., labels=...))")
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:  # a pickle, a text file, a truncated file
        if isinstance(e, FileNotFoundError):
            raise
        raise not_npz from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise not_npz
    with f:
        if "images" not in f:
            raise ValueError(f"{path} has no 'images' array (found: {list(f.keys())})")
        images = f["images"]
        labels = f["labels"] if "labels" in f else None
        captions = f["captions"] if "captions" in f else None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: 'images' must be uint8 [N, H, W, C], got {images.dtype} "
                         f"{images.shape}")
    if labels is not None and (labels.shape != (len(images),)
                               or not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{path}: 'labels' must be {len(images)} integers (one per image), got "
                         f"{labels.dtype} {labels.shape}")
    if captions is not None and (captions.shape != (len(images),)
                                 or captions.dtype.kind != "U"):
        raise ValueError(f"{path}: 'captions' must be {len(images)} strings (one per image), "
                         f"got {captions.dtype} {captions.shape}")
    return ArraySource(images, labels, captions)


def tfds_source(name: str, split: str, data_dir: str | None = None):
    import tensorflow_datasets as tfds  # imported here: heavy (seconds), and only tfds: needs it

    known = tfds.list_builders()
    if name.split("/")[0].split(":")[0] not in known:
        near = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        raise ValueError(f"unknown TFDS dataset {name!r}"
                         + (f"; closest: {', '.join(near)}" if near else ""))
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


class MixtureSource:
    """``n`` fixed draws from an exact-score mixture, as float32 vectors in data space."""

    def __init__(self, mixture, n: int = 65_536, seed: int = 0):
        x, y = mixture.sample(jax.random.key(seed), n)
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y, np.int32)
        self.mixture = mixture

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


GMM_CASES = ("ring", "gmm64")


def gmm_source(name: str, split: str = "train") -> MixtureSource:
    if name == "ring":
        m = gmm.ring(8, 2.0, 0.05)
    elif name == "gmm64":
        m = gmm.random_mixture(64, 16, 0.05, seed=0)
    else:
        raise ValueError(f"unknown mixture {name!r}; valid: {GMM_CASES}")
    return MixtureSource(m, seed=0 if split == "train" else 1)


def first_images(source, n: int, shape: tuple[int, ...]):
    """The first ``n`` images of a uint8 source as float32 ``[n, *shape]`` in ``[-1, 1]``."""
    x = np.stack([source[i]["image"] for i in range(n)]).astype(np.float32) / 127.5 - 1.0
    return x.reshape((n,) + tuple(shape))


def check_source(source, dataset: str, shape: tuple[int, ...], num_classes: int = 0) -> None:
    """An empty source, examples of another shape than the experiment declares, or labels
    outside ``0 .. num_classes - 1``, named before anything is built (a 32x32 file must not
    train "fine" as 28x28)."""
    if len(source) == 0:
        raise ValueError(f"dataset {dataset!r} has no examples: check the path / split")
    labels = getattr(source, "labels", None)  # in-memory sources: every label is checked
    if num_classes and labels is not None and len(labels) and (
            labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"dataset {dataset!r} has labels {int(labels.min())}..{int(labels.max())}"
                         f" but data.num_classes={num_classes}: labels must be 0.."
                         f"{num_classes - 1}")
    got = tuple(np.shape(source[0]["image"]))
    got = got + (1,) if len(got) == 2 else got
    if got != tuple(shape):
        if len(shape) == 3 and len(got) == 3:
            fix = (f"set --config.data.image_size={got[0]} --config.data.channels={got[2]}"
                   if got[0] == got[1] else "make the images square")
        else:
            fix = f"set --config.data.dim={got[0]}" if len(got) == 1 else "check data.dim"
        raise ValueError(f"dataset {dataset!r} holds examples of shape {got} but the experiment "
                         f"declares {tuple(shape)}: {fix}")


def get_source(dataset: str, split: str = "train", data_dir: str | None = None,
               image_size: int = 0):
    """Resolve a dataset name of the forms listed in the module docstring (``image_size``: what
    a caption folder's images are resized and cropped to)."""
    if dataset.startswith("gmm:"):
        return gmm_source(dataset[4:], split)
    if dataset == "fashion_mnist":
        return fashion_mnist(split, data_dir)
    if dataset.startswith("tfds:"):
        return tfds_source(dataset[5:], split, data_dir)
    if dataset.startswith("npz:"):
        return npz_source(dataset[4:])
    if dataset.startswith("captions:"):
        return CaptionFolder(dataset[9:], image_size)
    raise ValueError(f"unknown dataset {dataset!r}; valid: 'fashion_mnist', 'tfds:NAME', "
                     "'npz:PATH', 'captions:FOLDER', 'gmm'")
