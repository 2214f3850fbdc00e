"""Failure injection for the tests, into the real worker process.

Three kinds, all off unless their environment variable is set (the default and in
production a failpoint costs one dict lookup):

- ``WORKER_FAILPOINT=name:n`` makes the n-th (1-based) passage through ``failpoint(name)``
  kill the process with SIGKILL, exactly as an OOM killer or ``kill -9`` would;
- ``WORKER_RAISE=name@text[,name@text...]`` makes ``failpoint(name, key)`` raise
  ``InjectedFailure`` whenever ``key`` contains ``text``: one chunk that keeps failing at one
  place (the Spark fetch, the apply, the quarantine write), while its neighbours do not;
- ``WORKER_HANG=name@text[,...]`` makes ``failpoint(name, key)`` block for ever whenever
  ``key`` contains ``text``: a Spark job that never finishes.
"""

from __future__ import annotations

import os
import signal
import threading

_counts: dict[str, int] = {}


class InjectedFailure(RuntimeError):
    """Raised by an armed failpoint (tests only)."""


def _armed_kill() -> tuple[str, int] | None:
    spec = os.environ.get("WORKER_FAILPOINT", "")
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    return name, int(nth or "1")


def _armed_for(variable: str, name: str, key: str) -> bool:
    spec = os.environ.get(variable, "")
    for item in filter(None, spec.split(",")):
        point, _, text = item.partition("@")
        if point == name and text and text in key:
            return True
    return False


def failpoint(name: str, key: str = "") -> None:
    if key and _armed_for("WORKER_RAISE", name, key):
        raise InjectedFailure(f"injected failure at {name} for {key}")
    if key and _armed_for("WORKER_HANG", name, key):
        threading.Event().wait()  # nobody sets it
    armed = _armed_kill()
    if armed is None or armed[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)
