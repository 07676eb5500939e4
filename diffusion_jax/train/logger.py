"""Metrics a person can watch: every logged row goes to ``metrics.jsonl`` and, as scalars, to
TensorBoard event files in ``workdir/tensorboard``; sample grids go there as images too. Only
process 0 writes.

TensorBoard files are written with ``tensorboardX`` (no TensorFlow needed; ``clu``'s writers need
TensorFlow for event files and have had no release since 2024). ``read_scalars`` reads them back
with tensorboardX's own protobufs, so neither tests nor notebooks need the ``tensorboard`` package.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import jax
import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2


class MetricLogger:
    def __init__(self, workdir: str | Path, history: list[dict] | None = None):
        self.path = Path(workdir) / "metrics.jsonl"
        self.active = jax.process_index() == 0
        self.history = list(history or [])
        self._tb = None
        if self.active:  # rewrite the rows up to the resumed step (later ones are re-logged)
            self.path.write_text("".join(json.dumps(h) + "\n" for h in self.history))
            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), flush_secs=10)

    def write(self, row: dict) -> None:
        """A row ``{"step": int, name: float, ...}``; strings are kept in the JSON only."""
        self.history.append(row)
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, row["step"])

    def image(self, tag: str, grid_png: str | Path, step: int) -> None:
        """A saved grid (PNG) as a TensorBoard image."""
        if self.active:
            self._tb.add_image(tag, np.asarray(Image.open(grid_png).convert("RGB")), step,
                               dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_history(workdir: str | Path, upto: int) -> list[dict]:
    """The rows of ``metrics.jsonl`` logged at or before step ``upto``."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by kill -9 (it is re-logged after the resume)
            continue
    return [r for r in rows if r["step"] <= upto]


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``logdir``: ``{tag: [(step, value)]}``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out
