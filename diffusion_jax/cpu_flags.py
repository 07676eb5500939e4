"""XLA:CPU settings that make training and sampling faster on a CPU, applied when the package is
imported (before JAX initialises a backend, which is when XLA reads ``XLA_FLAGS``).

Why: XLA:CPU (jaxlib 0.10) hands convolutions and dots to YNNPACK "library fusions". For the 3x3
convolutions of a U-Net, YNNPACK's weight-gradient kernels cost ~4x the forward pass; XLA's own
emitters are 2x faster on the whole train step with identical losses (the measurements are in the
README's "CPU speed" section and ``tests/test_cpu_flags.py`` checks the numerics).

Rules, in order:
  * ``DIFFUSION_JAX_CPU_FLAGS=0`` (or ``false``/``off``): do nothing.
  * the user's ``XLA_FLAGS`` already names the flag: keep the user's value.
  * the installed jaxlib does not know the flag (XLA aborts on unknown flags): do nothing.
  * a JAX backend is already initialised (``XLA_FLAGS`` would be ignored): warn, do nothing.
Only CPU compilation reads ``xla_cpu_*`` flags, so GPU/TPU programs are unaffected.
"""

from __future__ import annotations

import importlib.util
import mmap
import os
import sys
import warnings
from pathlib import Path

FLAG = "xla_cpu_experimental_ynn_fusion_type"
# Empty value: no YNNPACK library fusions at all (fastest measured; narrower settings such as
# "-individual_convolution" are compared by `scripts/bench_cpu_flags.py`).
VALUE = ""
ENV_SWITCH = "DIFFUSION_JAX_CPU_FLAGS"

applied: str | None = None  # the flag string this import added to XLA_FLAGS, if any


def _jaxlib_knows(flag: str) -> bool:
    """Whether the installed jaxlib's XLA defines ``flag`` (a byte search of its shared
    libraries; nothing is imported or initialised)."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or spec.origin is None:
        return False
    libs = sorted(Path(spec.origin).parent.glob("*.so"), key=lambda p: -p.stat().st_size)
    needle = flag.encode()
    for lib in libs[:3]:  # the XLA runtime is the largest library
        with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m.find(needle) >= 0:
                return True
    return False


def _backend_initialised() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # noqa: BLE001 - a private module moved: assume the safe answer
        return True


def apply() -> str | None:
    """Add the CPU flag to ``XLA_FLAGS`` if the rules above allow it; returns what was added."""
    global applied
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    current = os.environ.get("XLA_FLAGS", "")
    if FLAG in current or applied:
        return None
    if not _jaxlib_knows(FLAG):
        return None
    if _backend_initialised():
        warnings.warn(f"diffusion_jax was imported after JAX initialised its backend, so the "
                      f"faster XLA:CPU setting --{FLAG}={VALUE} is not applied; import "
                      f"diffusion_jax first or put it in XLA_FLAGS yourself", stacklevel=3)
        return None
    applied = f"--{FLAG}={VALUE}"
    os.environ["XLA_FLAGS"] = f"{current} {applied}".strip()
    return applied
