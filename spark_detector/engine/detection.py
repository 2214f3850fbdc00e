"""The detection record: one row of ``detected_patterns`` as the engine and the outbox see it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Detection:
    seq: int  # gap-free detection order, 1-based
    pattern_id: str  # PatId1 / PatId2 / PatId3
    action_type: str  # UPGRADE / CHILD / DEI-NEEDED
    customer_name: str  # "" for PatId3
    merchant_id: str
    chunk_key: str  # the chunk after which it fired
    apply_order: int  # that chunk's apply order
    detected_at: datetime  # tz-aware; clock_timestamp() at insert, in the committing transaction
    y_start_time: datetime  # tz-aware; when the worker process that committed it started
    # Evidence at the moment it fired; None where it does not apply to the pattern.
    txn_count: int | None = None  # PatId1, PatId2: the pair's transactions
    avg_amount: Decimal | None = None  # PatId1, PatId2: amount_sum / txn_count, 6 places
    avg_weight: float | None = None  # PatId1
    p90_count: float | None = None  # PatId1: the merchant's percentile of txn_count
    p10_weight: float | None = None  # PatId1: the merchant's percentile of avg_weight
    female: int | None = None  # PatId3
    male: int | None = None  # PatId3
    merchant_total: int | None = None  # PatId1, PatId3: the merchant's transactions
    amount_sum: Decimal | None = None  # PatId1, PatId2: exact


# The columns of detected_patterns, in Detection's field order.
DETECTION_COLUMNS = (
    "seq, pattern_id, action_type, customer_name, merchant_id, chunk_key, apply_order,"
    " detected_at, y_start_time, txn_count, avg_amount, avg_weight, p90_count, p10_weight,"
    " female, male, merchant_total, amount_sum"
)


def detection_from_row(row: Sequence[Any]) -> Detection:
    """A Detection from a row selected or returned with ``DETECTION_COLUMNS``."""
    return Detection(*row)
