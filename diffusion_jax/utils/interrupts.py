"""SIGTERM and Ctrl-C end a command within seconds, whatever it is doing, with one line and
exit code 143 / 130; nothing is ever swallowed.

Python runs signal handlers in the main thread between bytecodes, so a handler alone waits out a
long XLA compile or kernel, and an interrupt that lands inside a garbage-collection callback is
printed as "Exception ignored" and lost. ``honoured_signals`` therefore has two paths:

* the handler raises ``Interrupted`` in the main thread (the ordinary case: outputs are written
  whole or not at all, see ``utils.atomic``, so unwinding leaves nothing half-written);
* the C-level handler also writes the signal to a wakeup pipe, from which a watchdog thread
  learns of it at once; if the command has not ended ``grace`` seconds later (inside XLA, or the
  exception was swallowed), the watchdog removes this process's unfinished temporaries, prints
  the same line and ends the process with the same code.

A command that installs its own handlers (the training loop saves a last checkpoint on SIGTERM)
keeps them: the watchdog acts only while ``honoured_signals``' handler is the installed one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from diffusion_jax.utils.atomic import remove_pending

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Interrupted(BaseException):
    """A command stopped by a signal; ``code`` is the shell's ``128 + signal``. A
    ``BaseException``, like ``KeyboardInterrupt``: ``except Exception`` (a reader skipping a
    damaged checkpoint, say) must not take it for an error of its own."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {NAMES.get(signum, signum)}; outputs are written whole "
                         "or not at all, so none was left half-written")
        self.signum, self.code = signum, 128 + signum


@contextlib.contextmanager
def honoured_signals(grace: float = 3.0):
    """Within the block, SIGINT/SIGTERM raise ``Interrupted``; yields the list of signals
    received (non-empty after one was swallowed: the caller exits with its code anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)
        raise Interrupted(signum)

    def unraisable(info):  # an interrupt lost in a gc callback: no "Exception ignored" noise
        if not isinstance(info.exc_value, Interrupted):
            old_hook(info)

    r, w = os.pipe()
    os.set_blocking(w, False)
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    old = {s: signal.signal(s, handler) for s in SIGNALS}
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(r, done, handler, grace), daemon=True)
    watcher.start()
    try:
        yield received
    finally:
        done.set()
        sys.unraisablehook = old_hook
        signal.set_wakeup_fd(old_fd)
        for s, h in old.items():
            signal.signal(s, h)
        with contextlib.suppress(OSError):  # the watchdog may have left already
            os.write(w, b"\0")  # wake the watchdog so that it sees ``done``
        watcher.join(timeout=1.0)
        os.close(w)


def _watch(r: int, done: threading.Event, handler, grace: float) -> None:
    try:
        while not done.is_set():
            data = os.read(r, 64)
            for signum in data:
                if signum not in SIGNALS or done.is_set():
                    continue
                if signal.getsignal(signum) is not handler:  # the command's own handler
                    continue
                if done.wait(grace):
                    return
                remove_pending()
                # "\r": a progress bar left mid-line does not swallow the line's start
                print(f"\rerror: {Interrupted(signum)}", file=sys.stderr, flush=True)
                os._exit(128 + signum)
    finally:
        os.close(r)
