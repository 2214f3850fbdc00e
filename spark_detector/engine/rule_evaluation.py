"""The state update and the three rules of one chunk, at a cost that follows the chunk, not the
state (docs/detection-semantics.md, "How the rules are computed").

The semantics are those of a full evaluation: after each chunk, every rule holds as if it were
evaluated for all customers of the merchants the chunk touched, and a key fires the first time
its condition holds. A full evaluation of a merchant costs its customers; the work here costs
the chunk's pairs, because with the thresholds of the merchant's previous evaluation (after the
last chunk that touched it, recorded in ``merchant_rule_state``) only these can newly hold:

- PatId2 and PatId3: the pairs (merchants) the chunk touched; nothing else changed.
- PatId1: the touched pairs, plus the untouched ones its percentiles moved over. An untouched
  pair did not hold last time, so either its count was under the old p90 (it holds now if p90
  came down to it: the *waiting* pairs, ``waiting_pairs``, are those with avg_weight <= p10,
  txn_count < p90 and PatId1 not fired, down to a count floor a quarter under p90) or its
  weight was over the old p10 (it holds now if p10 rose past it: the band (old p10, new p10] of
  the weight order, as wide as the chunk moved it).
- p90_count from ``pair_count_histogram`` (customers per count), in time proportional to the
  number of distinct counts; p10_weight as an order statistic tracked from its last position: a
  pivot key (avg_weight, customer) with the number of pairs below it, moved by the chunk's pairs,
  then a walk along ``weight_order`` to the new rank. Both are interpolated as PostgreSQL's
  ``percentile_cont`` does, in double precision, bit for bit.
- ``weight_order`` holds only the lowest weights of a tracked merchant (its tier: avg_weight <=
  ``tier_limit``). ``weight_order`` and ``waiting_pairs`` are tables of their own, so that
  ``pair_state`` has no index but its key: its updates stay HOT, as before this engine.

A merchant is evaluated in full, and its structures rebuilt, when it has no record (new, or a
database older than this engine), when the thresholds differ from its record's, when its total
first exceeds PatId1's minimum (its size is then bounded by that minimum), when its tier no
longer covers the percentile's rank (or has grown far past it), or when p90 falls under the
floor of its waiting pairs. That is the only work whose cost follows a merchant's size; each
such evaluation is logged.

Every step is one set-based statement over all the chunk's merchants, in the chunk's
transaction, with the chunk's rows in temp tables (``chunk_changes``, ``chunk_merchants``,
``chunk_candidates``). Each access to a large table is by key or by a range of an index,
inside a LATERAL subquery kept apart from the planner's join choices (OFFSET 0), and each
delete is by the row ids (ctid = ANY) such a lookup read in the same statement: no statistic
can turn one into a scan of a merchant's pairs. Nothing is kept in the worker's memory.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import psycopg2.extensions

from spark_detector.engine.detection_sql import CANDIDATES_SQL, INSERT_DETECTIONS_SQL, RECORD_SQL
from spark_detector.engine.percentile_sql import (
    CLASSIFY_SQL,
    FULL_PERCENTILE_SQL,
    FULL_REBUILD_SQL,
    LOST_SQL,
    WALK_SQL,
)
from spark_detector.engine.state_sql import TEMP_TABLES_SQL, UPSERT_STATE_SQL

__all__ = ["TEMP_TABLES_SQL", "evaluate", "fingerprint", "update_state"]

log = logging.getLogger(__name__)

# The tier of a tracked merchant holds at least TIER_FACTOR x (the p10 rank + 1) + TIER_MARGIN of
# its lowest weights (all of them when it has fewer): room for the percentile to move up before
# the tier must be rebuilt (a full evaluation of the merchant), at the price of a delete and an
# insert in weight_order for each of the chunk's pairs inside it.
TIER_FACTOR = 1.5
TIER_MARGIN = 100
# Rebuilt, too, when it holds more than TIER_OVERSIZE x that and has doubled since it was built
# (the second condition keeps ties at the limit from rebuilding it at every chunk).
TIER_OVERSIZE = 3
# waiting_pairs holds only the pairs whose count is at least a floor under p90: those p90 can
# come down to soon. The floor is p90 less WAITING_FRACTION of it (at least WAITING_MARGIN);
# p90 falling under it means a full evaluation of the merchant (reason 'waiting short').
WAITING_FRACTION = 0.25
WAITING_MARGIN = 2
# A full evaluation is logged (INFO) unless it is a new merchant's first, with fewer customers.
LOG_FULL_FROM_CUSTOMERS = 1000


def fingerprint(upgrade_min_total: int, upgrade_count_percentile: float,
                upgrade_weight_percentile: float, child_min_count: int,
                child_max_avg_amount: Decimal) -> str:
    """The PatId1 and PatId2 thresholds as one text: equal values, equal text. (PatId3 reads one
    merchant's counts and is evaluated in full every time.)"""
    return (f"PatId1 {upgrade_min_total} {upgrade_count_percentile!r}"
            f" {upgrade_weight_percentile!r}; PatId2 {child_min_count}"
            f" {child_max_avg_amount.normalize()}")


def update_state(cur: psycopg2.extensions.cursor, params: dict[str, Any]) -> None:
    """Add the pairs in ``chunk_pairs`` to the state (inside the chunk's transaction);
    ``params``: ``apply_order`` and the thresholds, as ``evaluate`` takes them."""
    cur.execute(UPSERT_STATE_SQL, params)


def evaluate(cur: psycopg2.extensions.cursor, params: dict[str, Any],
             chunk_key: str) -> list[tuple]:
    """Evaluate the rules for the merchants ``update_state`` touched, insert the keys that fire
    for the first time and return their rows (``DETECTION_COLUMNS``).

    ``params``: the thresholds (``upgrade_min_total``, ``count_percentile``,
    ``weight_percentile``, ``child_min_count``, ``child_max_avg_amount``, ``dei_min_female``) and
    ``chunk_key``, ``apply_order``, ``y_start_time``.
    """
    params = {
        **params,
        "min_total": params["upgrade_min_total"],
        "fingerprint": fingerprint(params["upgrade_min_total"], params["count_percentile"],
                                   params["weight_percentile"], params["child_min_count"],
                                   params["child_max_avg_amount"]),
        "tier_factor": TIER_FACTOR,
        "tier_margin": TIER_MARGIN,
        "tier_oversize": TIER_OVERSIZE,
        "waiting_fraction": WAITING_FRACTION,
        "waiting_margin": WAITING_MARGIN,
    }
    cur.execute(CLASSIFY_SQL, params)
    full = [(merchant, reason, customers) for merchant, mode, reason, customers
            in cur.fetchall() if mode == "full"]
    cur.execute(WALK_SQL)
    cur.execute(LOST_SQL)
    lost = [merchant for (merchant,) in cur.fetchall()]
    if lost:
        log.error("rule structures disagree with the state: evaluated in full",
                  extra={"chunk_key": chunk_key, "merchants": lost})
    if full or lost:
        cur.execute(FULL_PERCENTILE_SQL)
        cur.execute(FULL_REBUILD_SQL)
    cur.execute(CANDIDATES_SQL, params)
    cur.execute(INSERT_DETECTIONS_SQL, params)
    rows = cur.fetchall()
    cur.execute(RECORD_SQL, params)
    big = [f for f in full if f[1] != "new" or f[2] >= LOG_FULL_FROM_CUSTOMERS]
    if big:
        log.info("merchants evaluated in full", extra={
            "chunk_key": chunk_key,
            "merchants": [{"merchant": m, "reason": r, "customers": n} for m, r, n in big]})
    return rows
