"""Bounded exponential backoff for transient failures (PostgreSQL restarts, S3/SQS 5xx)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def backoff_delays(attempts: int, base: float = 0.2, cap: float = 10.0) -> list[float]:
    """The sleeps between `attempts` tries: base * 2^n, capped, without jitter (for tests)."""
    return [min(cap, base * (2**n)) for n in range(max(0, attempts - 1))]


def retry(
    fn: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    retry_if: Callable[[BaseException], bool] = lambda _exc: True,
    attempts: int = 6,
    base: float = 0.2,
    cap: float = 10.0,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn` until it succeeds or `attempts` tries have failed with `retry_on` errors.
    ``retry_if`` narrows them: an error it says no to is raised at once.

    Full jitter keeps several workers that failed together from retrying in lockstep.
    """
    delays = backoff_delays(attempts, base, cap)
    for attempt in range(attempts):
        try:
            return fn()
        except retry_on as exc:
            if attempt == attempts - 1 or not retry_if(exc):
                raise
            delay = random.uniform(delays[attempt] / 2, delays[attempt])
            if on_retry is not None:
                on_retry(attempt + 1, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")
