"""Model FLOPs counted from the program itself: every convolution and matrix product in the jaxpr
of a function, 2 FLOPs per multiply-add, nothing else (normalisation, activations and softmax are
left out, as MFU figures on TPUs and ``torch.utils.flop_counter`` leave them out).

This is the basis on which ``bench-train`` reports utilisation: *model* FLOPs per train step (the
train step's own jaxpr with remat off: forward and backward exactly as autodiff computes them)
divided by the step time, against the matmul rate measured in the same run. XLA's own cost analysis counts
what the compiled program executes instead (recomputation under remat, elementwise work, padding),
which is a hardware figure, not a model figure.

    from diffusion_jax.bench.flops import count_flops
    count_flops(lambda x: model.apply(params, x, t), x)   # forward FLOPs
"""

from __future__ import annotations

import math

import jax
from jax.extend import core as jex_core

def _dot_flops(eqn) -> int:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    batch = math.prod(lhs[d] for d in lb)
    contract = math.prod(lhs[d] for d in lc)
    lfree = math.prod(s for d, s in enumerate(lhs) if d not in lc and d not in lb)
    rfree = math.prod(s for d, s in enumerate(rhs) if d not in rc and d not in rb)
    return 2 * batch * lfree * rfree * contract


def _conv_flops(eqn) -> int:
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    dn = eqn.params["dimension_numbers"]
    # rhs spec: (out feature dim, in feature dim, spatial dims...)
    rhs_spec = dn.rhs_spec
    k_in = rhs[rhs_spec[1]]
    k_spatial = math.prod(rhs[d] for d in rhs_spec[2:])
    # each output element is a dot over in_features/groups x kernel window; the kernel's input
    # feature dim already holds in_features/groups
    return 2 * math.prod(out) * k_in * k_spatial


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        vs = v if isinstance(v, (tuple, list)) else (v,)
        for x in vs:
            if isinstance(x, jex_core.ClosedJaxpr):
                yield x.jaxpr
            elif isinstance(x, jex_core.Jaxpr):
                yield x


def _count(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "cond":  # the most expensive branch
            total += max(_count(b.jaxpr) for b in eqn.params["branches"])
        elif name == "scan":
            total += eqn.params["length"] * _count(eqn.params["jaxpr"].jaxpr)
        elif name == "while":
            raise ValueError("count_flops: a while loop has no static trip count; count its body")
        else:
            total += sum(_count(j) for j in _sub_jaxprs(eqn))
    return total


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of the convolutions and matrix products ``fn(*args, **kwargs)`` performs (traced, not
    run: arguments may be ``jax.ShapeDtypeStruct``)."""
    return _count(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
