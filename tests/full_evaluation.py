"""The engine's rules evaluated in full, as the engine did before ``rule_evaluation`` (commit
88f0bcc): after each chunk, both PatId1 percentiles recomputed with ``percentile_cont`` over every
customer of every merchant the chunk touched, and every pair of those merchants scanned for
PatId2. The reference the incremental evaluation is compared with
(tests/integration/test_rule_evaluation_differential.py): its statement is kept here word for
word, so that it shares nothing with the code it checks but the state update.

``evaluate_in_full`` has ``rule_evaluation.evaluate``'s signature: patch it in to apply chunks
with this evaluation (``applying_in_full``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import psycopg2.extensions

from spark_detector import rule_evaluation
from spark_detector.detection import DETECTION_COLUMNS

# The rules on the state after this chunk, for all customers of the merchants it touched, as
# docs/detection-semantics.md says. (With fixed thresholds only the chunk's own pairs could
# newly satisfy PatId2, but scanning the touched merchants' pairs costs the same one pass over
# pair_state and stays right when thresholds are changed between runs.) Keys that fired before are
# skipped before numbering, which keeps seq gap-free; ON CONFLICT stays as the guard of emit-once.
# Text ordering uses the "C" collation: bytewise, the same as Python's.
_EVALUATE_SQL = f"""
WITH touched AS (
    SELECT DISTINCT merchant FROM chunk_pairs
), upgrade_merchants AS (
    SELECT m.merchant, m.total
    FROM merchant_state m
    JOIN touched USING (merchant)
    WHERE m.total > %(upgrade_min_total)s
), upgrade_pairs AS MATERIALIZED (
    SELECT p.merchant, p.customer, p.txn_count, p.amount_sum, p.avg_weight, u.total
    FROM pair_state p
    JOIN upgrade_merchants u USING (merchant)
), percentiles AS (
    SELECT merchant,
           percentile_cont(%(count_percentile)s::float8)
               WITHIN GROUP (ORDER BY txn_count::float8) AS p90_count,
           percentile_cont(%(weight_percentile)s::float8)
               WITHIN GROUP (ORDER BY avg_weight) AS p10_weight
    FROM upgrade_pairs
    GROUP BY merchant
), candidates AS (
    SELECT 'PatId1' AS pattern_id, 'UPGRADE' AS action_type, p.customer, p.merchant,
           p.txn_count, p.amount_sum, p.avg_weight, q.p90_count, q.p10_weight,
           NULL::integer AS female, NULL::integer AS male, p.total AS merchant_total
    FROM upgrade_pairs p
    JOIN percentiles q USING (merchant)
    WHERE p.txn_count::float8 >= q.p90_count AND p.avg_weight <= q.p10_weight
    UNION ALL
    SELECT 'PatId2', 'CHILD', p.customer, p.merchant,
           p.txn_count, p.amount_sum, NULL, NULL, NULL, NULL, NULL, NULL
    FROM pair_state p
    JOIN touched USING (merchant)
    WHERE p.txn_count >= %(child_min_count)s
      AND p.amount_sum < %(child_max_avg_amount)s::numeric * p.txn_count
    UNION ALL
    SELECT 'PatId3', 'DEI-NEEDED', '', m.merchant,
           NULL, NULL, NULL, NULL, NULL, m.female, m.male, m.total
    FROM merchant_state m
    JOIN touched USING (merchant)
    WHERE m.female > %(dei_min_female)s AND m.female < m.male
), fresh AS (
    SELECT c.*
    FROM candidates c
    WHERE NOT EXISTS (
        SELECT 1 FROM detected_patterns d
        WHERE d.pattern_id = c.pattern_id
          AND d.merchant_id = c.merchant
          AND d.customer_name = c.customer
    )
), base AS (
    SELECT coalesce(max(seq), 0) AS last_seq FROM detected_patterns
)
INSERT INTO detected_patterns AS d
    (seq, pattern_id, action_type, customer_name, merchant_id, chunk_key, apply_order,
     y_start_time, txn_count, avg_amount, avg_weight, p90_count, p10_weight, female, male,
     merchant_total, amount_sum)
SELECT base.last_seq + row_number() OVER (
           ORDER BY f.pattern_id, f.merchant COLLATE "C", f.customer COLLATE "C"),
       f.pattern_id, f.action_type, f.customer, f.merchant, %(chunk_key)s, %(apply_order)s,
       %(y_start_time)s, f.txn_count, round(f.amount_sum / f.txn_count, 6), f.avg_weight,
       f.p90_count, f.p10_weight, f.female, f.male, f.merchant_total, f.amount_sum
FROM fresh f CROSS JOIN base
ON CONFLICT (pattern_id, merchant_id, customer_name) DO NOTHING
RETURNING {", ".join("d." + c.strip() for c in DETECTION_COLUMNS.split(","))}
"""


def evaluate_in_full(cur: psycopg2.extensions.cursor, params: dict[str, Any],
                     chunk_key: str) -> list[tuple]:
    cur.execute(_EVALUATE_SQL, params)
    return cur.fetchall()


@contextlib.contextmanager
def applying_in_full() -> Iterator[None]:
    """``apply_chunk`` evaluates the rules in full inside this block."""
    with mock.patch.object(rule_evaluation, "evaluate", evaluate_in_full):
        yield
