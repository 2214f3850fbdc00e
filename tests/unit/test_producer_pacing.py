"""The fixed-rate schedule, driven by a fake clock (nothing really sleeps)."""

from __future__ import annotations

from producer.pacing import FixedRateSchedule, delay_until_due


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_delay_is_measured_from_the_start_not_from_the_previous_slot():
    assert delay_until_due(start=10.0, interval=1.0, index=3, now=12.5) == 0.5
    assert delay_until_due(start=10.0, interval=1.0, index=3, now=13.75) == -0.75


def test_uploads_taking_300_ms_do_not_make_the_schedule_drift():
    clock = FakeClock()
    schedule = FixedRateSchedule(1.0, clock, clock.sleep)
    starts = []
    for _ in range(10):
        schedule.wait_for_next_slot()
        starts.append(clock.now)
        clock.now += 0.3  # the upload
    assert starts == [1000.0 + i for i in range(10)]
    assert len(clock.sleeps) == 9
    assert all(abs(s - 0.7) < 1e-9 for s in clock.sleeps)


def test_falling_behind_reports_lag_and_catches_up_without_sleeping():
    clock = FakeClock()
    schedule = FixedRateSchedule(1.0, clock, clock.sleep)
    schedule.wait_for_next_slot()
    clock.now += 3.5  # one very slow upload
    lags = []
    for _ in range(4):
        timing = schedule.wait_for_next_slot()
        lags.append(round(timing.lag, 6))
        clock.now += 0.1
    # Slots 1..3 are already overdue: sent back to back. Slot 4 is due at +4.0, reached at +3.8.
    assert lags == [2.5, 1.6, 0.7, 0.0]
    assert [round(s, 6) for s in clock.sleeps] == [0.2]


def test_interval_zero_never_sleeps():
    clock = FakeClock()
    schedule = FixedRateSchedule(0.0, clock, clock.sleep)
    for _ in range(5):
        assert schedule.wait_for_next_slot().lag == 0.0
    assert clock.sleeps == []
