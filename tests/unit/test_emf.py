"""The worker's log lines carry CloudWatch embedded-metric directives that name real fields."""

from __future__ import annotations

import io
import json
import logging

from json_logs import configure
from spark_detector.worker import emf
from spark_detector.worker.summary import BatchSummary


def test_a_batch_line_publishes_its_numbers_under_the_namespace():
    summary = BatchSummary(chunks=2, rows_good=19_990, rows_rejected=10, detections=3,
                           apply_ms=41, spark_ms=120, lag_ms=None)
    directive = emf.metric_directive("stack/Worker", summary.__dict__, emf.BATCH_METRICS,
                                     timestamp_ms=1_700_000_000_000)
    [block] = directive["_aws"]["CloudWatchMetrics"]
    assert directive["_aws"]["Timestamp"] == 1_700_000_000_000
    assert block["Namespace"] == "stack/Worker"
    assert block["Dimensions"] == [[]]
    published = {m["Name"]: m["Unit"] for m in block["Metrics"]}
    assert published["rows_good"] == "Count"
    assert published["apply_ms"] == "Milliseconds"
    assert "lag_ms" not in published  # None: CloudWatch would reject the whole line


def test_only_numbers_are_published():
    directive = emf.metric_directive("ns", {"chunks": True, "rows_good": "12", "detections": 0},
                                     emf.BATCH_METRICS)
    [block] = directive["_aws"]["CloudWatchMetrics"]
    assert [m["Name"] for m in block["Metrics"]] == ["detections"]


def test_every_batch_metric_is_a_field_of_the_batch_summary():
    fields = BatchSummary().__dict__
    assert set(emf.BATCH_METRICS) <= set(fields)


def test_the_json_line_holds_each_metric_beside_the_directive():
    """EMF reads each metric's value from the member of the same name in the same line."""
    out = io.StringIO()
    configure("emf-test", stream=out)
    fields = BatchSummary(chunks=1, rows_good=9_999, apply_ms=7).__dict__
    logging.getLogger("emf-test").info("batch done", extra={
        **fields, **emf.metric_directive("ns", fields, emf.BATCH_METRICS)})
    line = json.loads(out.getvalue().splitlines()[-1])
    names = [m["Name"] for m in line["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert names
    assert all(isinstance(line[name], int | float) for name in names)
    assert line["rows_good"] == 9_999
