"""A fixed-rate schedule: chunk n is due at ``start + n * interval``.

Deadlines are computed from the start, never from the previous chunk, so time spent uploading
does not accumulate as drift. When the producer falls behind it does not sleep until it has
caught up, and it reports how far behind it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


def delay_until_due(start: float, interval: float, index: int, now: float) -> float:
    """Seconds to wait before slot ``index`` (> 0), or how late it already is (<= 0)."""
    return start + index * interval - now


@dataclass(frozen=True)
class SlotTiming:
    index: int
    waited: float  # seconds slept before the slot
    lag: float  # seconds the slot started after its deadline (0 when on time)


class FixedRateSchedule:
    def __init__(
        self,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._index = 0

    def wait_for_next_slot(self) -> SlotTiming:
        """Block until the next slot is due; the first slot is due immediately."""
        now = self._clock()
        if self._start is None:
            self._start = now
        index = self._index
        self._index += 1
        delay = delay_until_due(self._start, self.interval, index, now)
        if delay > 0:
            self._sleep(delay)
            return SlotTiming(index, waited=delay, lag=0.0)
        return SlotTiming(index, waited=0.0, lag=max(0.0, -delay))
