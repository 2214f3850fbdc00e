"""The worker's figures as CloudWatch metrics, in its own log lines (embedded metric format).

A JSON log line whose ``_aws`` member names some of the line's other members as metrics is
turned into CloudWatch metrics by CloudWatch Logs itself: the ECS ``awslogs`` driver sends
the worker's stderr to its log group, so no agent, no ``PutMetricData`` call and no extra
package is needed. The values are the line's own fields (``rows_good``, ``apply_ms``, ...),
so the log and the metric can never disagree. The template's alarms and dashboard read them
from the namespace ``WORKER_METRICS_NAMESPACE`` (docs/operations.md, "Metrics").

Specification: docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/
CloudWatch_Embedded_Metric_Format_Specification.html
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

# The "batch done" line's fields that are published, with their CloudWatch units.
BATCH_METRICS: Mapping[str, str] = {
    "chunks": "Count",
    "rows_good": "Count",
    "rows_rejected": "Count",
    "rejected_chunks": "Count",
    "detections": "Count",
    "failures": "Count",
    "dead_lettered": "Count",
    "duplicate_numbers": "Count",
    "conflicts": "Count",
    "waiting": "Count",
    "spark_ms": "Milliseconds",
    "apply_ms": "Milliseconds",
    "batch_ms": "Milliseconds",
    "lag_ms": "Milliseconds",
}
# The "stream gap" line's: how long the next chunk in production order has been missing.
GAP_METRICS: Mapping[str, str] = {"waiting_s": "Seconds"}
# The S3 / Spark outage lines' (spark_detector/worker/outages.py): how long intake has been stopped.
OUTAGE_METRICS: Mapping[str, str] = {"outage_s": "Seconds"}


def metric_directive(namespace: str, fields: Mapping[str, Any], units: Mapping[str, str],
                     timestamp_ms: int | None = None) -> dict[str, Any]:
    """The ``_aws`` member that publishes ``fields``' numeric members named in ``units``.

    Members that are absent or not numbers (``lag_ms`` is None for a batch of backfilled
    chunks) are left out: CloudWatch would reject the whole line for one bad value. No
    dimensions: the namespace is the stack's own, so each metric is one series.
    """
    names = [name for name, value in ((n, fields.get(n)) for n in units)
             if isinstance(value, int | float) and not isinstance(value, bool)]
    return {"_aws": {
        "Timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        "CloudWatchMetrics": [{
            "Namespace": namespace,
            "Dimensions": [[]],
            "Metrics": [{"Name": name, "Unit": units[name]} for name in names],
        }],
    }}
