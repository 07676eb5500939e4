"""Meshes from the experiment's ``mesh`` axes, and the experiment's logical-axis rules restricted
to a mesh."""

from __future__ import annotations

import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

def make_mesh(axes, devices=None) -> Mesh:
    """``{"data": -1, "fsdp": 1}`` (or its items) -> a Mesh over all devices (``-1``: the devices
    left over). The batch is split over ``data`` and ``fsdp``; other axes are model axes."""
    axes = dict(axes)
    if "data" not in axes:
        raise ValueError(f"mesh {axes} has no 'data' axis; the batch is split over 'data' "
                         "(and 'fsdp'): add \"data\": -1")
    devices = jax.devices() if devices is None else devices
    names, sizes = list(axes), [int(v) for v in axes.values()]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(axes)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {dict(axes)}: {len(devices)} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(names, sizes))} has {math.prod(sizes)} devices but "
                         f"{len(devices)} are available; make the product match or use -1")
    # Auto axes: XLA propagates shardings from the in/out shardings we give jit (pjit semantics).
    return jax.make_mesh(tuple(sizes), tuple(names), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(sizes))


def rules_for_mesh(rules, mesh: Mesh):
    """Drop the mesh axes a mesh does not have (e.g. ``fsdp`` on a ``data``-only mesh)."""
    out = []
    for logical, axes in rules:
        axes_t = axes if isinstance(axes, tuple) else (axes,) if axes else ()
        kept = tuple(a for a in axes_t if a in mesh.axis_names)
        out.append((logical, kept if len(kept) > 1 else kept[0] if kept else None))
    return tuple(out)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    return NamedSharding(mesh, P(axes))


def batch_size_per_shard(mesh: Mesh, global_batch: int) -> int:
    n = math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.axis_names)
    if global_batch % n:
        raise ValueError(f"global batch {global_batch} is not divisible by the batch-sharding size "
                         f"{n} (mesh {dict(mesh.shape)}); use a multiple of {n}")
    return global_batch // n


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# Logical axis names used by the models -> mesh axes. An experiment may replace them
# (``config.sharding_rules``); mesh axes absent from a mesh are dropped for that mesh.
DEFAULT_RULES = (("batch", ("data", "fsdp")), ("conv_out", "fsdp"), ("mlp", "fsdp"),
                 ("kv", "fsdp"), ("conv_in", None), ("embed", None), ("heads", None),
                 ("patch", None))
