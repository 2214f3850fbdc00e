"""Failure injection for the tests, into the real worker process.

Three kinds, all off unless their environment variable is set (the default and in
production a failpoint costs one dict lookup):

- ``WORKER_FAILPOINT=name:n`` makes the n-th (1-based) passage through ``failpoint(name)``
  kill the process with SIGKILL, exactly as an OOM killer or ``kill -9`` would;
- ``WORKER_RAISE=name@text[,name@text...]`` makes ``failpoint(name, key)`` raise
  ``InjectedFailure`` whenever ``key`` contains ``text``: one chunk that keeps failing at one
  place (the Spark fetch, the apply, the quarantine write), while its neighbours do not;
- ``WORKER_HANG=name@text[,...]`` makes ``failpoint(name, key)`` block for ever whenever
  ``key`` contains ``text``: a Spark job that never finishes;
- ``WORKER_FAULT=name@kind@path[,...]`` makes every ``failpoint(name, ...)`` raise the
  fault ``kind`` while the file ``path`` exists, and append a line to that file each time:
  a dependency's outage the test switches on and off from outside the process, and counts.
  ``kind``: ``connect`` (S3's endpoint does not answer: botocore's
  ``EndpointConnectionError``), ``spark`` (a Spark runtime that fails every job:
  ``InjectedFailure``), or an S3 error code (``InternalError``, ``SlowDown``,
  ``AccessDenied``, ...: a ``ClientError`` with that code).
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


_FAULT_STATUS = {"AccessDenied": 403, "SlowDown": 503, "ServiceUnavailable": 503}


def _fault(kind: str, name: str) -> Exception:
    from botocore.exceptions import ClientError, EndpointConnectionError

    if kind == "connect":
        return EndpointConnectionError(endpoint_url=f"https://failpoint.invalid/{name}")
    if kind == "spark":
        return InjectedFailure(f"injected Spark runtime failure at {name}")
    return ClientError({"Error": {"Code": kind, "Message": f"injected at {name}"},
                        "ResponseMetadata": {"HTTPStatusCode": _FAULT_STATUS.get(kind, 500)}},
                       "GetObject")


def _raise_armed_fault(name: str) -> None:
    spec = os.environ.get("WORKER_FAULT", "")
    for item in filter(None, spec.split(",")):
        point, _, rest = item.partition("@")
        kind, _, path = rest.partition("@")
        if point != name or not path:
            continue
        try:  # no O_CREAT: the fault is on only while the file exists
            switch = os.open(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            continue
        try:
            os.write(switch, f"{name}\n".encode())
        finally:
            os.close(switch)
        raise _fault(kind, name)


def failpoint(name: str, key: str = "") -> None:
    if "WORKER_FAULT" in os.environ:
        _raise_armed_fault(name)
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
