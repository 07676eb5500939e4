"""Requests whose arrays cannot fit are refused with the estimate, before anything is
allocated (a batch of 10^9 images otherwise pins the machine and ignores signals while it
swaps)."""

from __future__ import annotations

import math
import os


def host_memory_bytes() -> int:
    """Physical memory of this host (``sysconf``; 0 where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_fits(count: int, shape: tuple[int, ...], what: str, copies: float = 1.0,
               bytes_per_value: int = 4) -> None:
    """Refuse ``count`` arrays of ``shape`` (float32: ``bytes_per_value``, ``copies`` of
    them) that need more than this host's memory."""
    need = count * math.prod(shape) * bytes_per_value * copies
    have = host_memory_bytes()
    if have and need > have:
        raise ValueError(f"{what} needs at least {_size(need)} for its images alone "
                         f"({count} x {'x'.join(map(str, shape))} float32"
                         + (f", {copies:g} copies" if copies != 1 else "")
                         + f"); this machine has {_size(have)}: choose a smaller value")
