"""Low-rank factorisation of dense layers and 1x1 convolutions by the truncated SVD: a kernel
``W [m, n]`` (a 1x1 conv's ``[1, 1, m, n]`` read as ``[m, n]``) is stored as ``A [m, r] = U_r S_r``
and ``B [r, n] = V_r^T``, the best rank-``r`` approximation in the Frobenius norm (Eckart-Young:
the error is the norm of the discarded singular values). ``r = ceil(ratio * min(m, n))``; a
kernel whose factors would not be smaller than itself (``r (m + n) >= m n``) is kept whole.
Spatial (3x3) convolutions and attention's 3-D projections are kept whole."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flax import struct

from diffusion_jax.compress.packed import Packed, map_kernels


@struct.dataclass
class LowRank(Packed):
    a: Any
    b: Any
    shape: tuple = struct.field(pytree_node=False)

    def materialize(self):
        return (self.a @ self.b).reshape(self.shape)


def check_ratio(ratio: float) -> float:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"--low-rank {ratio}: the kept fraction of each kernel's rank must be in "
                         "(0, 1), e.g. 0.25")
    return float(ratio)


def factorize_array(w, rank: int) -> LowRank:
    w = np.asarray(w, np.float32)
    m2 = w.reshape(-1, w.shape[-1]).astype(np.float64)
    u, s, vt = np.linalg.svd(m2, full_matrices=False)
    a = (u[:, :rank] * s[:rank]).astype(np.float32)
    return LowRank(a, vt[:rank].astype(np.float32), tuple(w.shape))


def factorable(w) -> bool:
    shape = np.shape(w)
    return len(shape) == 2 or (len(shape) == 4 and shape[:2] == (1, 1))


def lowrank_params(params, ratio: float):
    """``params`` with every dense / 1x1-conv kernel that gets smaller stored as ``LowRank``."""
    ratio = check_ratio(ratio)

    def one(name, w):
        if not factorable(w):
            return w
        m, n = int(np.prod(np.shape(w)[:-1])), np.shape(w)[-1]
        r = max(1, math.ceil(ratio * min(m, n)))
        return factorize_array(w, r) if r * (m + n) < m * n else w

    return map_kernels(one, params)
