"""Meshes from the experiment's ``mesh`` dict, and the logical-axis rules that map the models'
axis names to mesh axes."""

from __future__ import annotations

import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DEFAULT_RULES = (("batch", ("data", "fsdp")), ("conv_out", "fsdp"), ("mlp", "fsdp"),
                 ("conv_in", None), ("embed", None))


MESH_AXES = ("data", "fsdp")  # the mesh axes DEFAULT_RULES map logical names to


def make_mesh(axes: dict[str, int], devices=None) -> Mesh:
    """``{"data": -1, "fsdp": 1}`` -> a Mesh over all devices (``-1``: the devices left over)."""
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
        raise ValueError(f"mesh axes {unknown} are not known to the sharding rules; "
                         f"valid axes: {', '.join(MESH_AXES)}")
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
