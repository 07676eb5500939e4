"""Inception-v3 as FID uses it (the ``pt_inception-2015-12-05`` graph of Heusel et al.'s TF code,
as ported by pytorch-fid), in flax.linen, with weights from a user-given ``.npz``.

Nothing is downloaded. Convert the standard FID weights once, on any machine with torch:

    python scripts/convert_fid_inception.py pt_inception-2015-12-05-6726825d.pth inception_fid.npz

(the ``.pth`` is pytorch-fid's release asset, github.com/mseitzer/pytorch-fid/releases). The
converter stores a SHA-256 of the arrays inside the ``.npz``; ``load_inception`` recomputes it and
checks every array's shape against the module, naming the layer that differs.

Inputs are images in ``[-1, 1]`` of any size and 1 or 3 channels: they are resized to 299x299
bilinearly with half-pixel centres (``align_corners=False``, as pytorch-fid) and grey images are
repeated over RGB. ``features`` = the 2048-d pool3 vector; ``logits`` = the 1008-way head (IS).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

CHECKSUM_KEY = "__sha256__"


class BasicConv(nn.Module):
    features: int
    kernel: tuple[int, int] = (1, 1)
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel, (self.strides,) * 2, use_bias=False,
                    padding=[(p, p) for p in self.padding], name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg(x):
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max(x, stride=2, pad=0):
    return nn.max_pool(x, (3, 3), (stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = BasicConv(48, name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, name="branch_pool")(_avg(x))
        return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv(64, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max(x)], -1)


class InceptionC(nn.Module):
    c7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.c7
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = BasicConv(c7, name="branch7x7_1")(x)
        b7 = BasicConv(c7, **row, name="branch7x7_2")(b7)
        b7 = BasicConv(192, **col, name="branch7x7_3")(b7)
        bd = BasicConv(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, **col, name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, **row, name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, **col, name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, **row, name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, name="branch_pool")(_avg(x))
        return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max(x)], -1)


class InceptionE(nn.Module):
    max_pool: bool = False  # FID's Mixed_7c pools with max (a quirk of the TF graph)

    @nn.compact
    def __call__(self, x):
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = BasicConv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, **row, name="branch3x3_2a")(b3),
                              BasicConv(384, **col, name="branch3x3_2b")(b3)], -1)
        bd = BasicConv(448, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, **row, name="branch3x3dbl_3a")(bd),
                              BasicConv(384, **col, name="branch3x3dbl_3b")(bd)], -1)
        pooled = _max(x, 1, 1) if self.max_pool else _avg(x)
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], -1)


def resize_299(x):
    """``[B, H, W, 1|3]`` in [-1, 1] -> ``[B, 299, 299, 3]`` (bilinear, half-pixel centres)."""
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (299, 299):
        x = jax.image.resize(x, (x.shape[0], 299, 299, 3), "bilinear", antialias=False)
    return x


class InceptionV3(nn.Module):
    num_classes: int = 1008

    @nn.compact
    def __call__(self, x):
        """``x [B, H, W, C]`` in [-1, 1] -> ``(features [B, 2048], logits [B, num_classes])``."""
        x = resize_299(x.astype(jnp.float32))
        x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max(x)
        x = BasicConv(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        feats = jnp.mean(x, axis=(1, 2))
        return feats, nn.Dense(self.num_classes, name="fc")(feats)


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else k
        out.update(_flatten(v, path) if isinstance(v, dict) else {path: v})
    return out


def _unflatten(flat):
    tree = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def arrays_checksum(flat: dict) -> str:
    """SHA-256 over the arrays in key order (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for k in sorted(flat):
        a = np.ascontiguousarray(flat[k])
        h.update(f"{k}|{a.shape}|{a.dtype.str}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def abstract_variables(model: InceptionV3 | None = None) -> dict:
    model = model or InceptionV3()
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 299, 299, 3))))


def save_weights(variables: dict, path: str | Path) -> str:
    """Write ``{"params", "batch_stats"}`` as a flat ``.npz`` with its checksum; returns it."""
    flat = {k: np.asarray(v, np.float32) for k, v in _flatten(jax.device_get(variables)).items()}
    digest = arrays_checksum(flat)
    np.savez(path, **flat, **{CHECKSUM_KEY: np.array(digest)})
    return digest


def load_inception(path: str | Path, expected_sha256: str | None = None):
    """``(model, variables)`` from a weights ``.npz``; raises naming the first bad layer."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Inception weights {path} not found; convert the FID weights with "
                                "scripts/convert_fid_inception.py (see diffusion_jax/eval/inception.py)")
    with np.load(path, allow_pickle=False) as f:
        flat = {k: f[k] for k in f.files}
    stored = str(flat.pop(CHECKSUM_KEY, ""))
    model = InceptionV3()
    want = {k: v for k, v in _flatten(abstract_variables(model)).items()}
    missing = sorted(set(want) - set(flat))
    extra = sorted(set(flat) - set(want))
    if missing or extra:
        raise ValueError(f"{path}: weights do not match Inception-v3: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                         f"{' ...' if len(extra) > 5 else ''}")
    for k in sorted(want):
        if tuple(flat[k].shape) != tuple(want[k].shape):
            raise ValueError(f"{path}: layer {k} has shape {tuple(flat[k].shape)}, Inception-v3 "
                             f"needs {tuple(want[k].shape)}")
    digest = arrays_checksum(flat)
    if not stored:
        raise ValueError(f"{path}: no {CHECKSUM_KEY} entry; write the file with save_weights / "
                         "scripts/convert_fid_inception.py")
    if digest != stored:
        raise ValueError(f"{path}: checksum mismatch (stored {stored[:12]}..., arrays hash to "
                         f"{digest[:12]}...): the file is corrupt or was edited")
    if expected_sha256 and digest != expected_sha256:
        raise ValueError(f"{path}: checksum {digest[:12]}... is not the expected "
                         f"{expected_sha256[:12]}...: these are not the weights you asked for")
    return model, jax.tree_util.tree_map(jnp.asarray, _unflatten(flat))


def from_torch_state_dict(state_dict: dict) -> dict:
    """pytorch-fid's ``FIDInceptionA..E`` state dict (numpy arrays) -> flax variables.
    Conv ``OIHW`` -> ``HWIO``; BatchNorm weight/bias/running_mean/running_var -> scale/bias in
    ``params`` and mean/var in ``batch_stats``; ``fc.weight`` transposed."""
    params, stats = {}, {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        *mod, leaf = key.split(".")
        node = "/".join(mod)
        if leaf == "num_batches_tracked":
            continue
        if mod[-1] == "conv" and leaf == "weight":
            params[f"{node}/kernel"] = value.transpose(2, 3, 1, 0)
        elif mod[-1] == "bn":
            target = {"weight": (params, "scale"), "bias": (params, "bias"),
                      "running_mean": (stats, "mean"), "running_var": (stats, "var")}[leaf]
            target[0][f"{node}/{target[1]}"] = value
        elif mod == ["fc"]:
            params[f"fc/{'kernel' if leaf == 'weight' else 'bias'}"] = (
                value.T if leaf == "weight" else value)
        else:
            raise ValueError(f"unexpected entry {key!r} in the Inception state dict")
    return {"params": _unflatten(params), "batch_stats": _unflatten(stats)}
