"""Crash points for the crash-safety tests: the real process kills itself with SIGKILL.

`WORKER_FAILPOINT=name:n` makes the n-th (1-based) passage through `failpoint(name)` kill
the process, exactly as an OOM killer or `kill -9` would. Unset (the default and in
production), a failpoint costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _armed() -> tuple[str, int] | None:
    spec = os.environ.get("WORKER_FAILPOINT", "")
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    return name, int(nth or "1")


def failpoint(name: str) -> None:
    armed = _armed()
    if armed is None or armed[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)
