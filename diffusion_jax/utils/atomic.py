"""Outputs written whole or not at all: each file is written to a temporary name beside its
target and renamed into place (``os.replace``) only when complete, so a refused, failed,
interrupted or concurrent run never leaves a half-written file and never damages the previous
one. Two writers of one output both finish, and the file is one of them, whole.

    with atomic_path("runs/fm/eval/eval.json") as tmp:
        tmp.write_text(json_text(rows))

JSON outputs go through ``json_text``: NaN and infinities become ``null`` (valid JSON).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

_PENDING: set[Path] = set()  # temporaries of this process (the signal watchdog removes them)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """A temporary path beside ``path`` (same suffix, so writers that add one see it), renamed
    to ``path`` when the block ends without an exception, removed when it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    _PENDING.add(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        _PENDING.discard(tmp)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def json_text(obj, indent: int | None = 1) -> str:
    """``obj`` as strict JSON: NaN/inf (a diverged figure) are written as ``null``."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json_text(obj))


def remove_pending() -> None:
    """Remove this process's unfinished temporaries (called when a signal ends the run)."""
    for tmp in list(_PENDING):
        with contextlib.suppress(OSError):
            tmp.unlink()


def check_writable(path: str | Path, flag: str, folder: bool = False,
                   suffixes: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output that cannot be written: a wrong suffix, a folder
    where a file goes (or the reverse), a parent that is a file, a folder without write
    permission. Nothing is created."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{flag} {path} is a {'file' if folder else 'folder'}; give a "
                         f"{'folder' if folder else 'file name'}")
    if suffixes and path.suffix not in suffixes:
        raise ValueError(f"{flag} {path}: the name must end in {' or '.join(suffixes)}")
    target = path if folder and path.exists() else path.parent
    while not target.exists():  # the nearest existing ancestor is where folders get made
        target = target.parent
    if not target.is_dir():
        raise ValueError(f"{flag} {path}: {target} is a file, not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {target} is not writable; choose a folder you can "
                         "write to")
