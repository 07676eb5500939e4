"""One trainer per workdir: ``lock.json`` (pid, host, start time), created atomically. A second
trainer refuses and names the holder; a lock whose process is gone (dead pid on this host) is
taken over with a note. Only process 0 of a multi-host run locks (its workdir is shared)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path


class WorkdirLocked(ValueError):
    """Another live trainer holds the workdir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkdirLock:
    def __init__(self, workdir: str | Path):
        self.path = Path(workdir) / "lock.json"
        self.held = False

    def acquire(self, note=print) -> "WorkdirLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None or self._stale(holder, me):
                    who = "unreadable" if holder is None else f"pid {holder.get('pid')}"
                    note(f"note: taking over the stale lock {self.path} ({who}: no such process)")
                    self.path.unlink(missing_ok=True)
                    continue
                raise WorkdirLocked(
                    f"{self.path.parent} is in use by pid {holder.get('pid')} on "
                    f"{holder.get('host')} since {holder.get('started')}: stop that run or use "
                    f"another --workdir (if that process is gone, delete {self.path})") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise WorkdirLocked(f"could not take the lock {self.path}: another trainer keeps taking it")

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            # being written this instant, or a crash between create and write: look again
            time.sleep(0.2)
            try:
                return json.loads(self.path.read_text())
            except (OSError, ValueError):
                return None

    @staticmethod
    def _stale(holder: dict, me: dict) -> bool:
        if holder.get("host") != me["host"]:
            return False  # another machine: its pid means nothing here
        pid = int(holder.get("pid", -1))
        return pid == me["pid"] or not _alive(pid)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
