"""The demo's live view and summary, rendered from plain snapshots."""

from __future__ import annotations

import pytest

from infra.local.demo import DemoError, parse_rules
from infra.local.view import Snapshot, Summary, is_settled, render, render_summary, rows_per_second


def snap(elapsed: float, **values) -> Snapshot:
    base = dict(chunks_produced=0, events_pending=0, trigger_failures=0, chunks_queued=0,
                chunks_dead=0, chunks_applied=0, chunks_rejected=0, rows_good=0,
                rows_rejected=0)
    return Snapshot(elapsed_s=elapsed, **{**base, **values})


def test_rows_per_second_uses_the_recent_window():
    history = [snap(t, rows_good=r) for t, r in [(0, 0), (1, 0), (10, 50_000), (12, 70_000)]]
    assert rows_per_second(history, window_s=5) == 10_000
    assert rows_per_second(history[:1]) == 0.0


def test_the_view_shows_each_stage_and_the_detections():
    history = [snap(0), snap(2.0, chunks_produced=12, chunks_queued=3, chunks_applied=8,
                             chunks_rejected=1, rows_good=89_990, rows_rejected=10,
                             detections={"PatId2": 4, "PatId3": 1}, detection_files=0,
                             last_latency_s=0.84, events_pending=1)]
    text = render(history, chunks_expected=60, producer_state="streaming")
    assert "produced       12 chunks" in text
    assert "enqueued       12 chunks" in text  # 8 applied + 1 rejected + 3 queued
    assert "applied         8 chunks" in text and "rejected 1" in text
    assert "45,000 rows/s" in text and "10 rejected" in text
    assert "3 chunks behind" in text and "0.84 s" in text
    assert "PatId1     0" in text and "PatId2     4" in text and "PatId3     1" in text
    assert "ATTENTION" not in text


def test_the_view_calls_out_dead_letters():
    text = render([snap(1, chunks_dead=2, trigger_failures=1)], chunks_expected=None,
                  producer_state="finished")
    assert "2 chunk message(s) in the DLQ, 1 S3 event(s)" in text


@pytest.mark.parametrize(("producer_finished", "values", "settled"), [
    (True, dict(chunks_produced=5, chunks_applied=5), True),
    (True, dict(chunks_produced=5, chunks_applied=4, chunks_rejected=1), True),
    (False, dict(chunks_produced=5, chunks_applied=5), False),
    (True, dict(chunks_produced=5, chunks_applied=4), False),
    (True, dict(chunks_produced=5, chunks_applied=5, chunks_queued=1), False),  # a duplicate
    (True, dict(chunks_produced=5, chunks_applied=4, events_pending=1), False),
    (True, dict(chunks_produced=0), False),
])
def test_the_demo_ends_when_everything_produced_is_done(producer_finished, values, settled):
    assert is_settled(snap(9, **values), producer_finished) is settled


def test_the_summary_says_where_the_outputs_are():
    summary = Summary(
        elapsed_s=60.0, completed=True,
        snapshot=snap(60, chunks_applied=60, rows_good=594_000, rows_rejected=643,
                      detections={"PatId1": 80, "PatId2": 30, "PatId3": 1}),
        latency_p50_s=0.61, latency_p99_s=1.9,
        detection_keys=tuple(f"detected_patterns/detections-{n:08d}.csv" for n in (1, 2, 3)),
        quarantine_keys=2, output_dir="/x/.local/demo-output/detected_patterns",
        bucket="txn-pipeline-local", database_url="postgresql://postgres@/txn_demo?host=/s",
        psql="psql 'postgresql://postgres@/txn_demo?host=/s'", logs="/x/.local/logs")
    text = render_summary(summary)
    assert "PatId1 80, PatId2 30, PatId3 1 (total 111)" in text
    assert "594,000 good, 643 rejected" in text
    assert "p50 0.61 s, p99 1.90 s" in text
    assert "detections-00000003.csv" in text and "/x/.local/demo-output" in text
    assert "psql 'postgresql://postgres@/txn_demo?host=/s' -c" in text


def test_rule_overrides_name_known_thresholds_only():
    assert parse_rules(["PATID2_MIN_COUNT=40", "patid3_min_female=5"]) == {
        "PATID2_MIN_COUNT": "40", "PATID3_MIN_FEMALE": "5"}
    with pytest.raises(DemoError, match="PATID2_MIN_COUNT"):
        parse_rules(["child_min_count=3"])


def test_rule_overrides_out_of_range_are_refused_as_the_worker_refuses_them():
    with pytest.raises(DemoError, match=r"PATID2_MIN_COUNT=0 is out of range: allowed \[1, inf\)"):
        parse_rules(["PATID2_MIN_COUNT=0"])
