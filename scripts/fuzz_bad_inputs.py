"""Run the bad inputs of ``tests/test_bad_inputs.py`` against a code tree and count what each got:
a clean one-line refusal, a traceback, silent acceptance, an unclear message (one line that does
not name the flag or field and its value), a wrong exit code, a stray new folder, or changed
existing files. Used to measure the bad-inputs issue before (the previous commit, checked out
elsewhere) and after:

    git worktree add /tmp/before <commit>
    python scripts/fuzz_bad_inputs.py --tree /tmp/before --out before.json
    python scripts/fuzz_bad_inputs.py --tree . --out after.json

Each case runs in this one process through the tree's ``cli.main`` with a 20-second alarm (a case
still running then was accepted); the workdirs are trained by the tree's own code first.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


class Alarm(BaseException):
    pass


def _alarm(signum, frame):
    raise Alarm()


def restore(root: Path, pristine: Path, before: dict, after: dict) -> None:
    """Undo a case: remove what it made, copy back what it changed (cases stay independent)."""
    for rel in sorted(set(after) - set(before), reverse=True):
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
    for rel, digest in before.items():
        if digest is not None and after.get(rel) != digest:
            shutil.copy2(pristine / rel, root / rel)


def run_case(main, argv, names, root: Path, snapshot, before: dict) -> tuple[str, str]:
    """``before``: the tree every case starts from (what a case changed is judged against it,
    not against leftovers of an accepted case's background writes)."""
    out, err = io.StringIO(), io.StringIO()
    code, tb = None, ""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except Alarm:
        code = "running"
    except SystemExit as e:
        code = e.code
    except BaseException:  # noqa: BLE001 - what the user would see: a traceback
        tb = traceback.format_exc()
    finally:
        signal.alarm(0)
    after = snapshot(root)
    text = out.getvalue() + err.getvalue() + tb
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
    new = set(after) - set(before)
    if any(before[k] is not None and after.get(k) != before[k] for k in before):
        return "lost or damaged files", text[-300:]
    if tb or "Traceback" in text:
        return "traceback", text[-300:]
    if code in (0, "running"):
        return "silently accepted", text[-300:]
    if code != 2:
        return "wrong exit code", f"{code}: {text[-300:]}"
    if any(after[k] is None for k in new):
        return "stray folder", text[-300:]
    if len(lines) != 1 or not all(n in lines[0] for n in names):
        return "unclear message", text[-300:]
    return "clean one-line error", lines[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", required=True, help="the checkout whose diffusion_jax is tested")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="fuzz_xla_"))
    sys.path[:0] = [str(Path(args.tree).resolve()), str(HERE / "tests")]
    import conftest  # the suite's config helpers (8 host devices, as the suite runs)
    import test_bad_inputs as t
    from diffusion_jax.cli import main as cli_main

    assert Path(sys.modules["diffusion_jax"].__file__).is_relative_to(Path(args.tree).resolve())
    env = t.build_env(Path(tempfile.mkdtemp(prefix="fuzz_")), _Configs(conftest))
    root = env["root"]
    pristine = root.with_name(root.name + "_pristine")
    shutil.copytree(root, pristine)
    base = t._snapshot(root)
    rows, t0 = [], time.time()
    for argv, names in t.CASES:
        argv = [t._fill(a, env) for a in argv]
        names = [t._fill(n, env) for n in names]
        kind, detail = run_case(cli_main, argv, names, root, t._snapshot, base)
        restore(root, pristine, base, t._snapshot(root))
        rows.append({"argv": argv, "kind": kind, "detail": detail})
        print(f"{kind:22s} {' '.join(argv)[:110]}", flush=True)
    counts = collections.Counter(r["kind"] for r in rows)
    Path(args.out).write_text(json.dumps({"tree": args.tree, "cases": len(rows),
                                          "counts": counts, "rows": rows}, indent=1))
    print(json.dumps(counts, indent=1), f"\n{len(rows)} cases in {time.time() - t0:.0f} s")


class _Configs:
    def __init__(self, c):
        self.toy, self.tiny_image, self.family = c.toy_config, c.tiny_image_config, c.family_config


if __name__ == "__main__":
    main()
