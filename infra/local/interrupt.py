"""SIGTERM and SIGINT end a long-running command of the local stack the same way: cleanly.

Python's default for SIGTERM ends the process at once, no ``finally`` clause run, so the
children a command started in sessions of their own - moto, the Lambda runner, the embedded
PostgreSQL, a Spark cluster, the worker and the producer - would be left running (a terminal's
Ctrl-C does not reach them either: they are in other sessions on purpose, for the command to
stop in order). A ``main`` wrapped in ``stops_cleanly`` takes SIGTERM as it takes SIGINT: an
``Interrupted`` exception raised in the main thread, so the ``with`` blocks and ``finally``
clauses on its way out stop what it started. The command then exits with 128 + the signal's
number (143 for SIGTERM, 130 for SIGINT), as a shell reports a process the signal ended.

A second signal while that cleanup runs is ignored (and said on stderr), so that the cleanup
is not cut short itself; SIGKILL still ends the command at once, leaving its children.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT asked the command to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_interrupt(prog: str) -> Iterator[None]:
    """Within the block, the first SIGTERM or SIGINT raises ``Interrupted``; later ones are
    ignored. The previous handlers are back afterwards."""
    stopping = False

    def interrupt(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            print(f"{prog}: already stopping what it started (SIGKILL would leave it running)",
                  file=sys.stderr, flush=True)
            return
        stopping = True
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stops_cleanly(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a command's ``main``: SIGTERM and SIGINT unwind it (``signals_interrupt``),
    and it returns 128 + the signal's number after its cleanup, else what ``main`` returns.

    A plain ``KeyboardInterrupt`` counts as SIGINT: PySpark replaces the SIGINT handler with
    its own (which cancels the running jobs, then raises it) when a SparkContext starts."""

    def decorate(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(*args: object, **kwargs: object) -> int:
            try:
                with signals_interrupt(prog):
                    return main(*args, **kwargs) or 0
            except KeyboardInterrupt as exc:
                signum = getattr(exc, "signum", signal.SIGINT)
                print(f"{prog}: stopped by {signal.Signals(signum).name}; what it started is"
                      " stopped", file=sys.stderr, flush=True)
                return 128 + signum

        return wrapped

    return decorate
