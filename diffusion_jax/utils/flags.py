"""Typed command-line values: each parser checks its value's type and range and says what was
wrong in the user's words, before anything runs; the CLI puts the flag in front (``--nfe: 'abc'
is not an integer``, ``--num must be >= 1, got 0``) with ``usage_message``.

    ap.add_argument("--num", type=integer(1), default=64)
    ap.add_argument("--nfe", type=int_list(1), default="5,10,20")
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
from typing import Callable, Iterable


def _fail(msg: str):
    raise argparse.ArgumentTypeError(msg)


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An integer in ``[lo, hi]``."""
    def parse(v: str) -> int:
        try:
            x = int(v)
        except ValueError:
            _fail(f"{v!r} is not an integer")
        if lo is not None and x < lo:
            _fail(f"must be >= {lo}, got {x}")
        if hi is not None and x > hi:
            _fail(f"must be <= {hi}, got {x}")
        return x
    parse.__name__ = "integer"
    return parse


def number(lo: float | None = None, hi: float | None = None,
           lo_open: bool = False) -> Callable[[str], float]:
    """A finite number in ``[lo, hi]`` (``lo_open``: ``> lo``)."""
    def parse(v: str) -> float:
        try:
            x = float(v)
        except ValueError:
            _fail(f"{v!r} is not a number")
        if not math.isfinite(x):
            _fail(f"{v!r} is not a finite number")
        if lo is not None and (x <= lo if lo_open else x < lo):
            _fail(f"must be {'>' if lo_open else '>='} {lo:g}, got {v}")
        if lo is not None and hi is not None and x > hi:
            _fail(f"must be in [{lo:g}, {hi:g}], got {v}")
        if hi is not None and x > hi:
            _fail(f"must be <= {hi:g}, got {v}")
        return x
    parse.__name__ = "number"
    return parse


def int_list(lo: int | None = None) -> Callable[[str], list[int]]:
    """``"5,10,20"`` -> ``[5, 10, 20]``; at least one, each an integer ``>= lo``."""
    one = integer(lo)

    def parse(v: str) -> list[int]:
        items = [x for x in v.split(",") if x.strip()]
        if not items:
            _fail(f"{v!r} names no values: give numbers separated by commas")
        return [one(x.strip()) for x in items]
    parse.__name__ = "int_list"
    return parse


def name_list(valid: Iterable[str], what: str) -> Callable[[str], list[str]]:
    """``"a,b"`` -> ``["a", "b"]``; at least one, each one of ``valid`` (a typo gets the
    closest name)."""
    valid = list(valid)

    def parse(v: str) -> list[str]:
        items = [x.strip() for x in v.split(",") if x.strip()]
        if not items:
            _fail(f"{v!r} names no {what}")
        for x in items:
            if x not in valid:
                near = difflib.get_close_matches(x, valid, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; valid: {', '.join(valid)}"
                _fail(f"unknown {what} {x!r}{hint}")
        return items
    parse.__name__ = "name_list"
    return parse


def choice(valid: Iterable[str], what: str) -> Callable[[str], str]:
    """One of ``valid`` (a typo gets the closest name)."""
    many = name_list(valid, what)

    def parse(v: str) -> str:
        items = many(v)
        if len(items) != 1 or "," in v:
            _fail(f"give one {what}, got {v!r}")
        return items[0]
    parse.__name__ = "choice"
    return parse


def usage_message(message: str) -> str:
    """argparse's ``argument --num: must be >= 1, got 0`` as ``--num must be >= 1, got 0``."""
    m = re.match(r"argument (\S+?)(?:/\S+)?: (.*)", message)
    if not m:
        return message
    flag, rest = m.groups()
    return f"{flag} {rest}" if rest.startswith("must") else f"{flag}: {rest}"
