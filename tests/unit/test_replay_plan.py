"""The replay's pure middle: chunk order, rules, targets, the publish guard, the comparison."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest

from spark_detector.db import redact_dsn
from spark_detector.engine.rules import Thresholds, changed_rules
from spark_detector.ops.replay_plan import (
    ADDED,
    COMPARE_COLUMNS,
    KEYS,
    MOVED,
    RECORDED,
    REMOVED,
    ArchivedChunk,
    FiredDetection,
    RecordedChunk,
    ReplayError,
    ReplayRefused,
    Target,
    check_publish_prefix,
    compare_detections,
    compare_summary,
    parse_target,
    plan_chunks,
    render_compare_csv,
    thresholds_with_rules,
)

P = "stream_chunks/"


def listed(*names: str) -> list[ArchivedChunk]:
    return [ArchivedChunk(P + n, f"etag-{n}") for n in names]


def test_recorded_order_is_the_live_apply_order_without_rejected_or_pending_chunks():
    archive = listed("c1.csv", "c2.csv", "c3.csv", "c4.csv", "bad.csv")
    recorded = [RecordedChunk(P + "c2.csv", 1, "etag-c2.csv"),
                RecordedChunk(P + "c1.csv", 2, "etag-c1.csv"),
                RecordedChunk(P + "c3.csv", 3, "etag-c3.csv")]

    plan = plan_chunks(archive, recorded, [P + "bad.csv"], RECORDED)

    assert plan.keys == [P + "c2.csv", P + "c1.csv", P + "c3.csv"]
    assert plan.skipped_rejected == (P + "bad.csv",)
    assert plan.not_applied_live == (P + "c4.csv",)
    assert plan.changed_since_applied == ()


def test_recorded_order_reports_a_chunk_overwritten_since_it_was_applied():
    plan = plan_chunks(listed("c1.csv"), [RecordedChunk(P + "c1.csv", 1, "older-etag")], [],
                       RECORDED)
    assert plan.changed_since_applied == (P + "c1.csv",)


def test_recorded_order_refuses_when_an_applied_chunk_left_the_archive():
    with pytest.raises(ReplayError, match="no longer in the archive"):
        plan_chunks(listed("c1.csv"), [RecordedChunk(P + "c0.csv", 1)], [], RECORDED)


def test_recorded_order_without_a_live_record_points_to_key_order():
    with pytest.raises(ReplayError, match="--order keys"):
        plan_chunks(listed("c1.csv"), None, [], RECORDED)


def test_key_order_takes_every_listed_chunk_but_the_rejected_ones():
    archive = listed("chunk-00000002.csv", "chunk-00000001.csv", "chunk-00000003.csv")
    plan = plan_chunks(archive, [RecordedChunk(P + "chunk-00000002.csv", 1)],
                       [P + "chunk-00000003.csv"], KEYS)
    assert plan.keys == [P + "chunk-00000001.csv", P + "chunk-00000002.csv"]
    assert plan.skipped_rejected == (P + "chunk-00000003.csv",)


def test_rules_override_thresholds_by_their_environment_names():
    base = Thresholds(child_min_count=8)
    changed = thresholds_with_rules(base, ["PATID2_MIN_COUNT=60",
                                           "PATID2_MAX_AVG_AMOUNT = 20.5"])
    assert changed == Thresholds(child_min_count=60, child_max_avg_amount=Decimal("20.5"))
    assert changed_rules(base, changed) == {"PATID2_MIN_COUNT": "60",
                                            "PATID2_MAX_AVG_AMOUNT": "20.5"}
    assert thresholds_with_rules(base, []) == base


@pytest.mark.parametrize(("rule", "message"), [
    ("PATID9_MIN=1", "unknown rule"),
    ("PATID2_MIN_COUNT", "NAME=VALUE"),
    ("PATID2_MIN_COUNT=lots", "not a valid"),
    # the worker's own ranges: a what-if the worker would refuse is refused
    ("PATID2_MIN_COUNT=0", r"PATID2_MIN_COUNT=0 is out of range: allowed \[1, inf\)"),
    ("PATID1_COUNT_PERCENTILE=1.5",
     r"PATID1_COUNT_PERCENTILE=1.5 is out of range: allowed \(0, 1\)"),
])
def test_a_bad_rule_is_refused_with_its_name(rule, message):
    with pytest.raises(ReplayError, match=message):
        thresholds_with_rules(Thresholds(), [rule])


def test_targets_are_a_database_url_a_schema_or_the_live_database():
    assert parse_target("postgresql://u:pw@h/replay", False) == Target(
        database_url="postgresql://u:pw@h/replay")
    assert parse_target("whatif_1", False) == Target(schema="whatif_1")
    assert parse_target(None, True) == Target(replace=True)
    for bad in (None, "Bad-Name", "pg_temp"):
        with pytest.raises(ReplayError):
            parse_target(bad, False)
    with pytest.raises(ReplayError):
        parse_target("x", True)


def test_a_database_named_in_a_message_has_no_password():
    assert redact_dsn("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_dsn("postgresql://u:p%40ss@h/db?sslmode=verify-full") == (
        "postgresql://u:***@h/db?sslmode=verify-full")
    assert redact_dsn("postgresql://h/db?user=u&password=secret") == (
        "postgresql://h/db?user=u&password=***")
    assert redact_dsn("host=h user=u password='se cret' dbname=d") == (
        "host=h user=u password=*** dbname=d")
    assert redact_dsn("postgresql://u@h/db") == "postgresql://u@h/db"


def test_publishing_is_refused_under_the_live_or_the_chunk_prefix():
    kwargs = {"detections_prefix": "detected_patterns/", "chunk_prefix": "stream_chunks/"}
    assert check_publish_prefix("whatif/run1", replace=False, **kwargs) == "whatif/run1/"
    with pytest.raises(ReplayRefused, match="live detection prefix"):
        check_publish_prefix("detected_patterns/", replace=False, **kwargs)
    with pytest.raises(ReplayRefused, match="live detection prefix"):
        check_publish_prefix("detected_patterns/whatif/", replace=False, **kwargs)
    assert check_publish_prefix("detected_patterns/", replace=True, **kwargs)
    with pytest.raises(ReplayRefused, match="trigger"):
        check_publish_prefix("stream_chunks/out/", replace=True, **kwargs)


def fired(seq: int, pattern: str, merchant: str, customer: str, chunk: int) -> FiredDetection:
    return FiredDetection(seq, pattern, merchant, customer, f"c{chunk}", chunk)


def test_compare_lists_added_removed_and_later_detections_once_each():
    live = [fired(1, "PatId2", "M1", "C1", 3), fired(2, "PatId2", "M1", "C2", 3),
            fired(3, "PatId3", "M2", "", 5)]
    replayed = [fired(1, "PatId2", "M1", "C1", 3), fired(2, "PatId2", "M1", "C3", 4),
                fired(3, "PatId3", "M2", "", 7)]

    changes = compare_detections(live, replayed)

    assert [(c.change, c.pattern_id, c.customer_name) for c in changes] == [
        (REMOVED, "PatId2", "C2"), (ADDED, "PatId2", "C3"), (MOVED, "PatId3", "")]
    moved = changes[2]
    assert (moved.live_chunk_key, moved.replay_chunk_key) == ("c5", "c7")
    rows = list(csv.DictReader(io.StringIO(render_compare_csv(changes))))
    assert tuple(rows[0]) == COMPARE_COLUMNS
    assert rows[1]["change"] == ADDED and rows[1]["live_chunk_key"] == ""
    assert rows[1]["replay_apply_order"] == "4"
    summary = compare_summary(live, replayed, changes, {"PATID2_MIN_COUNT": "60"})
    assert "PATID2_MIN_COUNT=60" in summary and "3 detection(s) differ" in summary
    assert summary.splitlines()[-2].split() == ["total", "3", "3", "1", "1", "1"]


def test_compare_of_identical_runs_is_empty():
    live = [fired(1, "PatId1", "M1", "C1", 2)]
    assert compare_detections(live, list(live)) == []
    assert render_compare_csv([]).splitlines() == [",".join(COMPARE_COLUMNS)]
    assert "equals the live run" in compare_summary(live, live, [])


def test_the_replay_driver_gets_its_jvm_options_unless_the_operator_set_some():
    from spark_detector.ops.replay import REPLAY_JAVA_OPTIONS, submit_args_for_local_driver

    args = submit_args_for_local_driver({})
    assert REPLAY_JAVA_OPTIONS in args and args.endswith("pyspark-shell")
    assert submit_args_for_local_driver({"PYSPARK_SUBMIT_ARGS": "--master x pyspark-shell"}
                                        ) is None


def test_numbers_missing_from_the_archive_and_not_settled_are_the_gaps():
    from spark_detector.ops.replay_plan import unsettled_gaps

    assert unsettled_gaps([1, 2, 5, 7, None], [3, None]) == [4, 6]  # None: a hand upload
    assert unsettled_gaps([None], []) == []


def test_a_rebuild_run_again_keeps_its_order_unless_told_another():
    from datetime import UTC, datetime

    from spark_detector.db import RebuildState
    from spark_detector.ops.rebuild import LiveRebuild

    unfinished = RebuildState(datetime(2026, 12, 1, tzinfo=UTC), "alice", KEYS, 1)
    assert LiveRebuild(None, unfinished).order(None) == KEYS
    assert LiveRebuild(None, unfinished).order(RECORDED) == RECORDED
    assert LiveRebuild(None, None).order(None) == RECORDED
    assert "run `python -m spark_detector replay --replace` again" in unfinished.describe()
