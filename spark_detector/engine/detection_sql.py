"""The detections of the rules, in SQL (``rule_evaluation.evaluate``, steps 4-5): the pairs that
may newly hold, the keys that fire inserted gap-free, and each merchant's evaluation recorded."""

from __future__ import annotations

from spark_detector.engine.detection import DETECTION_COLUMNS

# What may fire: every pair of a merchant evaluated in full; otherwise the chunk's pairs, the
# waiting pairs p90 came down to, and the pairs p10 rose past (counts compared as the full
# evaluation always did: txn_count as a double against the percentile).
CANDIDATES_SQL = """
INSERT INTO chunk_candidates
SELECT 'PatId1', 'UPGRADE', p.customer, p.merchant, p.txn_count, p.amount_sum, p.avg_weight,
       m.p90_new, m.p10_new, NULL::integer, NULL::integer, m.total
FROM chunk_merchants m
JOIN pair_state p USING (merchant)
WHERE m.mode = 'full' AND m.tracked
  AND p.txn_count::float8 >= m.p90_new AND p.avg_weight <= m.p10_new
UNION ALL
SELECT 'PatId2', 'CHILD', p.customer, p.merchant, p.txn_count, p.amount_sum,
       NULL, NULL, NULL, NULL, NULL, NULL
FROM chunk_merchants m
JOIN pair_state p USING (merchant)
WHERE m.mode = 'full'
  AND p.txn_count >= %(child_min_count)s
  AND p.amount_sum < %(child_max_avg_amount)s::numeric * p.txn_count
UNION ALL
SELECT 'PatId1', 'UPGRADE', c.customer, c.merchant, c.txn_count, c.amount_sum, c.avg_weight,
       m.p90_new, m.p10_new, NULL, NULL, m.total
FROM chunk_merchants m
JOIN chunk_changes c USING (merchant)
WHERE m.mode = 'incremental'
  AND c.txn_count::float8 >= m.p90_new AND c.avg_weight <= m.p10_new
UNION ALL
SELECT 'PatId2', 'CHILD', c.customer, c.merchant, c.txn_count, c.amount_sum,
       NULL, NULL, NULL, NULL, NULL, NULL
FROM chunk_merchants m
JOIN chunk_changes c USING (merchant)
WHERE m.mode <> 'full'
  AND c.txn_count >= %(child_min_count)s
  AND c.amount_sum < %(child_max_avg_amount)s::numeric * c.txn_count
UNION ALL
SELECT 'PatId1', 'UPGRADE', p.customer, p.merchant, p.txn_count, p.amount_sum, p.avg_weight,
       m.p90_new, m.p10_new, NULL, NULL, m.total
FROM chunk_merchants m
CROSS JOIN LATERAL (
    SELECT customer FROM waiting_pairs
    WHERE merchant = m.merchant AND txn_count >= ceil(m.p90_new)::bigint
    OFFSET 0
) w
CROSS JOIN LATERAL (
    SELECT * FROM pair_state WHERE merchant = m.merchant AND customer = w.customer OFFSET 0
) p
WHERE m.mode = 'incremental'
  AND p.txn_count::float8 >= m.p90_new AND p.avg_weight <= m.p10_new
UNION ALL
SELECT 'PatId1', 'UPGRADE', p.customer, p.merchant, p.txn_count, p.amount_sum, p.avg_weight,
       m.p90_new, m.p10_new, NULL, NULL, m.total
FROM chunk_merchants m
CROSS JOIN LATERAL (
    SELECT customer FROM weight_order
    WHERE merchant = m.merchant AND avg_weight > m.p10_old AND avg_weight <= m.p10_new
    OFFSET 0
) b
CROSS JOIN LATERAL (
    SELECT * FROM pair_state WHERE merchant = m.merchant AND customer = b.customer OFFSET 0
) p
WHERE m.mode = 'incremental'
  AND p.txn_count::float8 >= m.p90_new AND p.avg_weight <= m.p10_new
UNION ALL
SELECT 'PatId3', 'DEI-NEEDED', '', m.merchant,
       NULL, NULL, NULL, NULL, NULL, m.female, m.male, m.total
FROM chunk_merchants m
WHERE m.female > %(dei_min_female)s AND m.female < m.male
"""

# Keys that fired before are skipped before numbering, which keeps seq gap-free; ON CONFLICT
# stays as the guard of emit-once. Text ordering uses the "C" collation: bytewise, the same as
# Python's. Fired keys are looked up one candidate at a time (LATERAL ... LIMIT 1: never a hash
# of every detection so far, whose cost would follow the history).
INSERT_DETECTIONS_SQL = f"""
WITH fresh AS (
    SELECT DISTINCT ON (c.pattern_id, c.merchant, c.customer) c.*
    FROM chunk_candidates c
    LEFT JOIN LATERAL (
        SELECT true AS fired FROM detected_patterns d
        WHERE d.pattern_id = c.pattern_id
          AND d.merchant_id = c.merchant
          AND d.customer_name = c.customer
        LIMIT 1
    ) f ON true
    WHERE f.fired IS NULL
    ORDER BY c.pattern_id, c.merchant, c.customer
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

# After the chunk: the waiting pairs of incrementally evaluated merchants, and every touched
# merchant's record. Only these can stop waiting: the chunk's pairs (their row has their old
# count), the pairs p90 came down to, the pairs p10 fell below, the pairs under a raised floor;
# and only these can start: the chunk's pairs and the pairs p10 rose past (a pair whose key
# fired never waits).
RECORD_SQL = """
WITH stopped AS (
    SELECT w.row_id
    FROM chunk_merchants m
    JOIN chunk_changes c USING (merchant)
    CROSS JOIN LATERAL (
        SELECT ctid AS row_id FROM waiting_pairs
        WHERE merchant = c.merchant AND txn_count = c.old_count AND customer = c.customer
        OFFSET 0) w
    WHERE m.mode = 'incremental' AND c.old_avg_weight <= m.p10_old
      AND c.old_count >= m.waiting_floor
    UNION
    SELECT w.row_id
    FROM chunk_merchants m
    CROSS JOIN LATERAL (
        SELECT ctid AS row_id FROM waiting_pairs
        WHERE merchant = m.merchant AND txn_count >= m.waiting_floor
          AND txn_count < m.waiting_floor_new
        OFFSET 0) w
    WHERE m.mode = 'incremental' AND m.waiting_floor_new > m.waiting_floor
    UNION
    SELECT w.row_id
    FROM chunk_merchants m
    CROSS JOIN LATERAL (
        SELECT ctid AS row_id FROM waiting_pairs
        WHERE merchant = m.merchant AND txn_count >= ceil(m.p90_new)::bigint
        OFFSET 0) w
    WHERE m.mode = 'incremental'
    UNION
    SELECT w.row_id
    FROM chunk_merchants m
    CROSS JOIN LATERAL (
        SELECT customer FROM weight_order
        WHERE merchant = m.merchant AND avg_weight > m.p10_new AND avg_weight <= m.p10_old
        OFFSET 0) b
    CROSS JOIN LATERAL (
        SELECT txn_count FROM pair_state
        WHERE merchant = m.merchant AND customer = b.customer OFFSET 0) p
    CROSS JOIN LATERAL (
        SELECT ctid AS row_id FROM waiting_pairs
        WHERE merchant = m.merchant AND txn_count = p.txn_count AND customer = b.customer
        OFFSET 0) w
    WHERE m.mode = 'incremental'
), started AS (
    SELECT c.merchant, c.txn_count, c.customer
    FROM chunk_merchants m
    JOIN chunk_changes c USING (merchant)
    WHERE m.mode = 'incremental'
      AND c.avg_weight <= m.p10_new AND c.txn_count::float8 < m.p90_new
      AND c.txn_count >= m.waiting_floor_new
    UNION
    SELECT p.merchant, p.txn_count, p.customer
    FROM chunk_merchants m
    CROSS JOIN LATERAL (
        SELECT customer FROM weight_order
        WHERE merchant = m.merchant AND avg_weight > m.p10_old AND avg_weight <= m.p10_new
        OFFSET 0) b
    CROSS JOIN LATERAL (
        SELECT merchant, txn_count, customer FROM pair_state
        WHERE merchant = m.merchant AND customer = b.customer OFFSET 0) p
    WHERE m.mode = 'incremental' AND p.txn_count::float8 < m.p90_new
      AND p.txn_count >= m.waiting_floor_new
), gone AS (
    DELETE FROM waiting_pairs WHERE ctid = ANY (ARRAY(SELECT row_id FROM stopped))
), came AS (
    INSERT INTO waiting_pairs (merchant, txn_count, customer)
    SELECT s.merchant, s.txn_count, s.customer
    FROM started s
    LEFT JOIN LATERAL (
        SELECT true AS fired FROM detected_patterns d
        WHERE d.pattern_id = 'PatId1' AND d.merchant_id = s.merchant
          AND d.customer_name = s.customer
        LIMIT 1
    ) f ON true
    WHERE f.fired IS NULL
)
INSERT INTO merchant_rule_state AS r
    (merchant, fingerprint, tracked, p90_count, p10_weight, pivot_weight, pivot_customer,
     pivot_rank, tier_limit, tier_count, tier_built, waiting_floor)
SELECT merchant, %(fingerprint)s, tracked,
       CASE WHEN tracked THEN p90_new END, CASE WHEN tracked THEN p10_new END,
       CASE WHEN tracked THEN pivot_weight ELSE '-Infinity' END,
       CASE WHEN tracked THEN pivot_customer ELSE '' END,
       CASE WHEN tracked THEN below ELSE 0 END,
       CASE WHEN tracked THEN tier_limit ELSE 'Infinity' END,
       CASE WHEN tracked THEN tier_count ELSE 0 END,
       CASE WHEN tracked THEN tier_built ELSE 0 END,
       CASE WHEN tracked THEN waiting_floor_new ELSE 0 END
FROM chunk_merchants
ON CONFLICT (merchant) DO UPDATE SET
    fingerprint = excluded.fingerprint, tracked = excluded.tracked,
    p90_count = excluded.p90_count, p10_weight = excluded.p10_weight,
    pivot_weight = excluded.pivot_weight, pivot_customer = excluded.pivot_customer,
    pivot_rank = excluded.pivot_rank, tier_limit = excluded.tier_limit,
    tier_count = excluded.tier_count, tier_built = excluded.tier_built,
    waiting_floor = excluded.waiting_floor
"""
