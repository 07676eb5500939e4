"""grain pipelines: deterministic shuffle by seed, repeat, per-process shard, map, batch; and the
step from per-host numpy batches to global ``jax.Array`` s."""

from __future__ import annotations

import grain
import jax
import numpy as np


def image_pipeline(source, global_batch: int, seed: int, random_flip: bool = False,
                   process_index: int | None = None, process_count: int | None = None):
    """An iterable grain dataset of per-process batches ``{"image": f32 [b,H,W,C] in [-1,1],
    "label": i32 [b]}`` (and ``"caption"``: ``b`` strings, where the source has captions) with ``b = global_batch / process_count``; its iterator's state
    (``get_state``/``set_state``) is what the checkpoint stores."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if global_batch % pc:
        raise ValueError(f"global batch {global_batch} is not divisible by {pc} processes")

    def to_float(ex, rng: np.random.Generator):
        extra = {"caption": str(ex["caption"])} if "caption" in ex else {}
        if ex["image"].dtype != np.uint8:  # already in data space (synthetic mixtures)
            return {"image": ex["image"], "label": np.int32(ex["label"]), **extra}
        img = ex["image"].astype(np.float32) / 127.5 - 1.0
        if img.ndim == 2:
            img = img[..., None]
        if random_flip and rng.random() < 0.5:
            img = img[:, ::-1]
        return {"image": img, "label": np.int32(ex["label"]), **extra}

    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
    ds = ds[pi::pc].random_map(to_float, seed=seed + 1).batch(global_batch // pc, drop_remainder=True)
    return ds.to_iter_dataset()


def global_batch(batch: dict, sharding) -> dict:
    """Per-process numpy arrays -> global arrays laid out by ``sharding`` (batch axis first)."""
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), batch)


def image_batches(source, batch: int):
    """The whole source in order, as ``(images f32 [b, H, W, C] in [-1, 1], labels [b])`` numpy
    batches (the last one may be smaller): for evaluation, not training."""
    for i in range(0, len(source), batch):
        idx = np.arange(i, min(i + batch, len(source)))
        ex = [source[int(j)] for j in idx]
        x = np.stack([e["image"] for e in ex]).astype(np.float32) / 127.5 - 1.0
        yield (x if x.ndim == 4 else x[..., None]), np.array([e["label"] for e in ex])
