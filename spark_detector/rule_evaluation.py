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

from spark_detector.detection import DETECTION_COLUMNS

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

TEMP_TABLES_SQL = """
CREATE TEMP TABLE IF NOT EXISTS chunk_changes (
    merchant           text COLLATE "C" NOT NULL,
    customer           text COLLATE "C" NOT NULL,
    is_new             boolean NOT NULL,
    old_count          bigint NOT NULL,            -- 0 for a new pair
    txn_count          bigint NOT NULL,
    amount_sum         numeric NOT NULL,
    avg_weight         double precision,
    old_avg_weight     double precision,           -- as before this chunk
    newly_weighted     boolean NOT NULL,           -- its first weighted transaction
    gender             text NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS chunk_merchants (
    merchant        text COLLATE "C" NOT NULL,
    mode            text NOT NULL,                 -- full / incremental / plain (PatId1 off)
    reason          text,                          -- why full
    tracked         boolean NOT NULL,              -- total > PatId1's minimum
    total           bigint NOT NULL,
    customers       bigint NOT NULL,
    weighted        bigint NOT NULL,
    female          integer NOT NULL,
    male            integer NOT NULL,
    p90_new         double precision,
    p10_old         double precision,
    p10_new         double precision,
    pivot_weight    double precision,
    pivot_customer  text COLLATE "C",
    below           bigint,                        -- tier pairs ordered below the pivot
    w_pos           double precision,              -- p10's position, floor and ceiling
    w_r1            bigint,
    w_r2            bigint,
    tier_target     bigint,
    tier_limit      double precision,
    tier_count      bigint,
    tier_built      bigint,
    waiting_floor   bigint,                        -- as recorded, and after this chunk
    waiting_floor_new bigint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS chunk_candidates (
    pattern_id      text COLLATE "C" NOT NULL,
    action_type     text NOT NULL,
    customer        text COLLATE "C" NOT NULL,
    merchant        text COLLATE "C" NOT NULL,
    txn_count       bigint,
    amount_sum      numeric,
    avg_weight      double precision,
    p90_count       double precision,
    p10_weight      double precision,
    female          integer,
    male            integer,
    merchant_total  bigint
) ON COMMIT DELETE ROWS;
"""

# The chunk's pairs (in chunk_pairs) added to the state. A pair is new when this chunk inserted
# it (first_apply_order is set on insert only); only new pairs change a merchant's customer and
# female/male counts, because a pair's gender is the one on its first applied transaction and
# never changes. A pair of a tracked merchant moves in weight_order from its old weight to its
# new one, each where it is <= the tier limit of the merchant's record (where the record is
# about to be rebuilt, the rebuild replaces the merchant's rows). The weight before the chunk
# is the new sums less the chunk's: weight_sum is exact, so the double is the one avg_weight had.
# chunk_changes keeps the pairs the evaluation reads: those of tracked merchants, and those that
# satisfy PatId2 (any other merchant is evaluated in full, or for PatId2 and PatId3 only).
UPSERT_STATE_SQL = """
WITH upserted AS (
    INSERT INTO pair_state AS s
        (merchant, customer, txn_count, amount_sum, weight_sum, weighted_count, gender,
         first_apply_order, last_apply_order)
    SELECT merchant, customer, txn_count, amount_sum, weight_sum, weighted_count, first_gender,
           %(apply_order)s, %(apply_order)s
    FROM chunk_pairs
    ON CONFLICT (merchant, customer) DO UPDATE SET
        txn_count = s.txn_count + excluded.txn_count,
        amount_sum = s.amount_sum + excluded.amount_sum,
        weight_sum = s.weight_sum + excluded.weight_sum,
        weighted_count = s.weighted_count + excluded.weighted_count,
        last_apply_order = excluded.last_apply_order
    RETURNING s.merchant, s.customer, s.gender, s.txn_count, s.amount_sum, s.weight_sum,
              s.weighted_count, s.avg_weight, s.first_apply_order = %(apply_order)s AS is_new
), joined AS (
    SELECT u.merchant, u.customer, u.is_new, u.txn_count - c.txn_count AS old_count,
           u.txn_count, u.amount_sum, u.avg_weight,
           CASE WHEN u.weighted_count > c.weighted_count
                THEN (u.weight_sum - c.weight_sum)::float8 / (u.weighted_count - c.weighted_count)
           END AS old_avg_weight,
           u.weighted_count > 0 AND u.weighted_count = c.weighted_count AS newly_weighted,
           u.gender
    FROM upserted u
    JOIN chunk_pairs c USING (merchant, customer)
), tracked AS (
    SELECT merchant, tier_limit FROM merchant_rule_state WHERE tracked
), changes AS (
    INSERT INTO chunk_changes
    SELECT j.*
    FROM joined j
    WHERE j.merchant IN (SELECT merchant FROM tracked)
       OR (j.txn_count >= %(child_min_count)s
           AND j.amount_sum < %(child_max_avg_amount)s::numeric * j.txn_count)
), moved AS (
    SELECT j.merchant, j.customer, j.avg_weight, j.old_avg_weight, t.tier_limit
    FROM joined j
    JOIN tracked t USING (merchant)
    WHERE j.avg_weight IS DISTINCT FROM j.old_avg_weight
), left_tier AS (
    DELETE FROM weight_order
    WHERE ctid = ANY (ARRAY(
        SELECT o.row_id
        FROM moved m
        CROSS JOIN LATERAL (
            SELECT ctid AS row_id FROM weight_order
            WHERE merchant = m.merchant AND avg_weight = m.old_avg_weight
              AND customer = m.customer
            OFFSET 0) o
        WHERE m.old_avg_weight <= m.tier_limit))
), joined_tier AS (
    INSERT INTO weight_order (merchant, avg_weight, customer)
    SELECT merchant, avg_weight, customer FROM moved WHERE avg_weight <= tier_limit
), histogram AS (
    INSERT INTO pair_count_histogram AS h (merchant, txn_count, customers)
    SELECT merchant, txn_count, sum(moved)
    FROM (SELECT merchant, txn_count, 1 AS moved FROM joined
          UNION ALL
          SELECT merchant, old_count, -1 FROM joined WHERE old_count > 0) moves
    GROUP BY merchant, txn_count
    HAVING sum(moved) <> 0
    ON CONFLICT (merchant, txn_count) DO UPDATE SET customers = h.customers + excluded.customers
)
INSERT INTO merchant_state AS ms (merchant, total, customers, female, male, weighted)
SELECT merchant,
       sum(txn_count - old_count),
       count(*) FILTER (WHERE is_new),
       count(*) FILTER (WHERE is_new AND gender = 'F'),
       count(*) FILTER (WHERE is_new AND gender = 'M'),
       count(*) FILTER (WHERE newly_weighted)
FROM joined
GROUP BY merchant
ON CONFLICT (merchant) DO UPDATE SET
    total = ms.total + excluded.total,
    customers = ms.customers + excluded.customers,
    female = ms.female + excluded.female,
    male = ms.male + excluded.male,
    weighted = ms.weighted + excluded.weighted
"""

# One row per merchant the chunk touched: how it is evaluated, its p90 (from the histogram) and
# where p10 must be looked for. The tier and the pivot move with the chunk's pairs: a pair
# leaves the tier with its old key and joins it with its new one.
# Percentiles as percentile_cont computes them: position = q * (n - 1); the value at the
# position's floor, interpolated towards the one at its ceiling.
_CLASSIFY_SQL = """
WITH moves AS (
    SELECT c.merchant,
           count(*) FILTER (WHERE c.old_avg_weight <= r.tier_limit) AS left_tier,
           count(*) FILTER (WHERE c.avg_weight <= r.tier_limit) AS joined_tier,
           count(*) FILTER (WHERE c.old_avg_weight <= r.tier_limit
                              AND (c.old_avg_weight, c.customer)
                                  < (r.pivot_weight, r.pivot_customer)) AS left_below,
           count(*) FILTER (WHERE c.avg_weight <= r.tier_limit
                              AND (c.avg_weight, c.customer)
                                  < (r.pivot_weight, r.pivot_customer)) AS joined_below
    FROM chunk_changes c
    JOIN merchant_rule_state r USING (merchant)
    WHERE r.tracked
    GROUP BY c.merchant
), touched AS (
    SELECT DISTINCT merchant FROM chunk_pairs
), sized AS (
    SELECT m.merchant, m.total, m.customers, m.weighted, m.female, m.male,
           m.total > %(min_total)s AS tracked,
           CASE
               WHEN r.merchant IS NULL THEN 'new'
               WHEN r.fingerprint <> %(fingerprint)s THEN 'thresholds'
               WHEN r.tracked <> (m.total > %(min_total)s) THEN 'crossed'
           END AS stale,
           r.p10_weight AS p10_old, r.pivot_weight, r.pivot_customer,
           r.pivot_rank - coalesce(v.left_below, 0) + coalesce(v.joined_below, 0) AS below,
           r.tier_limit,
           r.tier_count - coalesce(v.left_tier, 0) + coalesce(v.joined_tier, 0) AS tier_count,
           r.tier_built, r.waiting_floor,
           CASE WHEN m.weighted > 0 THEN %(weight_percentile)s::float8 * (m.weighted - 1) END
               AS w_pos,
           %(count_percentile)s::float8 * (m.customers - 1) AS c_pos
    FROM touched t
    JOIN merchant_state m USING (merchant)
    LEFT JOIN merchant_rule_state r USING (merchant)
    LEFT JOIN moves v USING (merchant)
), ranked AS (
    SELECT s.*, floor(s.w_pos)::bigint AS w_r1, ceil(s.w_pos)::bigint AS w_r2,
           ceil(%(tier_factor)s::float8 * (ceil(s.w_pos) + 1))::bigint + %(tier_margin)s
               AS tier_target,
           floor(s.c_pos)::bigint AS c_r1, ceil(s.c_pos)::bigint AS c_r2
    FROM sized s
), counted AS (
    SELECT r.*,
           CASE WHEN r.c_r1 = r.c_r2 THEN h.v1::float8
                ELSE h.v1::float8 + (r.c_pos - r.c_r1) * (h.v2::float8 - h.v1::float8)
           END AS p90_new
    FROM ranked r
    LEFT JOIN LATERAL (
        SELECT min(c.txn_count) FILTER (WHERE c.customers_to > r.c_r1) AS v1,
               min(c.txn_count) FILTER (WHERE c.customers_to > r.c_r2) AS v2
        FROM (SELECT txn_count, sum(customers) OVER (ORDER BY txn_count) AS customers_to
              FROM pair_count_histogram
              WHERE merchant = r.merchant) c
    ) h ON r.tracked
), floored AS (
    SELECT c.*,
           greatest(1, ceil(c.p90_new)::bigint - greatest(%(waiting_margin)s,
                       ceil(%(waiting_fraction)s::float8 * c.p90_new)::bigint)) AS floor_target
    FROM counted c
), judged AS (
    SELECT f.*,
           CASE
               WHEN f.stale IS NOT NULL THEN f.stale
               WHEN NOT f.tracked THEN NULL
               WHEN f.tier_limit < 'Infinity' AND f.w_r2 >= f.tier_count THEN 'tier short'
               WHEN f.tier_count > %(tier_oversize)s * f.tier_target
                    AND f.tier_count > 2 * f.tier_built THEN 'tier oversize'
               WHEN ceil(f.p90_new) < f.waiting_floor THEN 'waiting short'
           END AS reason
    FROM floored f
)
INSERT INTO chunk_merchants
    (merchant, mode, reason, tracked, total, customers, weighted, female, male, p90_new,
     p10_old, pivot_weight, pivot_customer, below, w_pos, w_r1, w_r2, tier_target, tier_limit,
     tier_count, tier_built, waiting_floor, waiting_floor_new)
SELECT j.merchant,
       CASE WHEN j.reason IS NOT NULL THEN 'full'
            WHEN j.tracked THEN 'incremental'
            ELSE 'plain' END,
       j.reason, j.tracked, j.total, j.customers, j.weighted, j.female, j.male, j.p90_new,
       j.p10_old, j.pivot_weight, j.pivot_customer, j.below, j.w_pos, j.w_r1, j.w_r2,
       j.tier_target, j.tier_limit, j.tier_count, j.tier_built, j.waiting_floor,
       -- raised only when p90 has moved a whole margin above it: a floor that follows every
       -- step of p90 would be short at its first step back
       CASE WHEN j.reason IS NOT NULL
                 OR j.floor_target - j.waiting_floor
                    >= greatest(%(waiting_margin)s,
                                ceil(%(waiting_fraction)s::float8 * j.p90_new)::bigint)
            THEN j.floor_target ELSE j.waiting_floor END
FROM judged j
RETURNING merchant, mode, reason, customers
"""

# p10 of the incrementally evaluated merchants: from the old pivot key, forward (or backward) as
# many pairs as the rank moved, to the pair at the position's floor; the next one is the ceiling.
# Ties are ordered by customer, so every pair has one place.
_WALK_SQL = """
UPDATE chunk_merchants m
SET p10_new = CASE WHEN x.w_r2 = x.w_r1 THEN f.w ELSE f.w + (x.w_pos - x.w_r1) * (c.w - f.w) END,
    pivot_weight = f.w, pivot_customer = f.customer, below = x.w_r1
FROM chunk_merchants x
CROSS JOIN LATERAL (
    (SELECT p.avg_weight AS w, p.customer
     FROM weight_order p
     WHERE x.w_r1 >= x.below AND p.merchant = x.merchant
       AND (p.avg_weight, p.customer) >= (x.pivot_weight, x.pivot_customer)
     ORDER BY p.avg_weight, p.customer
     OFFSET greatest(x.w_r1 - x.below, 0) LIMIT 1)
    UNION ALL
    (SELECT p.avg_weight, p.customer
     FROM weight_order p
     WHERE x.w_r1 < x.below AND p.merchant = x.merchant
       AND (p.avg_weight, p.customer) < (x.pivot_weight, x.pivot_customer)
     ORDER BY p.avg_weight DESC, p.customer DESC
     OFFSET greatest(x.below - x.w_r1 - 1, 0) LIMIT 1)
) f
LEFT JOIN LATERAL (
    SELECT p.avg_weight AS w
    FROM weight_order p
    WHERE x.w_r2 > x.w_r1 AND p.merchant = x.merchant
      AND (p.avg_weight, p.customer) > (f.w, f.customer)
    ORDER BY p.avg_weight, p.customer
    LIMIT 1
) c ON true
WHERE m.merchant = x.merchant AND x.mode = 'incremental' AND x.weighted > 0
"""

# A walk that found nothing means the structures disagree with the state: evaluate in full.
_LOST_SQL = """
UPDATE chunk_merchants
SET mode = 'full', reason = 'walk lost'
WHERE mode = 'incremental' AND weighted > 0 AND p10_new IS NULL
RETURNING merchant
"""

# Merchants evaluated in full: p10 and the pivot from one sort of their weights, the tier as
# many of the lowest weights as tier_target asks.
_FULL_PERCENTILE_SQL = """
UPDATE chunk_merchants m
SET p10_new = CASE WHEN m.w_r2 = m.w_r1 THEN s.floor_w
                   ELSE s.floor_w + (m.w_pos - m.w_r1) * (s.ceil_w - s.floor_w) END,
    pivot_weight = s.floor_w, pivot_customer = s.floor_customer, below = m.w_r1,
    tier_limit = CASE WHEN m.tier_target >= m.weighted THEN 'Infinity' ELSE s.limit_w END
FROM (
    SELECT o.merchant,
           min(o.avg_weight) FILTER (WHERE o.position = o.w_r1) AS floor_w,
           min(o.customer) FILTER (WHERE o.position = o.w_r1) AS floor_customer,
           min(o.avg_weight) FILTER (WHERE o.position = o.w_r2) AS ceil_w,
           min(o.avg_weight) FILTER (WHERE o.position = o.tier_target - 1) AS limit_w
    FROM (SELECT p.merchant, p.avg_weight, p.customer, f.w_r1, f.w_r2, f.tier_target,
                 row_number() OVER (PARTITION BY p.merchant
                                    ORDER BY p.avg_weight, p.customer) - 1 AS position
          FROM chunk_merchants f
          JOIN pair_state p USING (merchant)
          WHERE f.mode = 'full' AND f.tracked AND f.weighted > 0
            AND p.avg_weight IS NOT NULL) o
    GROUP BY o.merchant
) s
WHERE m.merchant = s.merchant;
UPDATE chunk_merchants
SET pivot_weight = '-Infinity', pivot_customer = '', below = 0, tier_limit = 'Infinity'
WHERE mode = 'full' AND (NOT tracked OR weighted = 0);
"""

# ... and their rows of weight_order and waiting_pairs replaced.
_FULL_REBUILD_SQL = """
DELETE FROM weight_order w USING chunk_merchants f
WHERE f.mode = 'full' AND w.merchant = f.merchant;
INSERT INTO weight_order (merchant, avg_weight, customer)
SELECT p.merchant, p.avg_weight, p.customer
FROM chunk_merchants f
JOIN pair_state p USING (merchant)
WHERE f.mode = 'full' AND f.tracked AND p.avg_weight <= f.tier_limit;
DELETE FROM waiting_pairs w USING chunk_merchants f
WHERE f.mode = 'full' AND w.merchant = f.merchant;
INSERT INTO waiting_pairs (merchant, txn_count, customer)
SELECT p.merchant, p.txn_count, p.customer
FROM chunk_merchants f
JOIN pair_state p USING (merchant)
WHERE f.mode = 'full' AND f.tracked
  AND p.avg_weight <= f.p10_new AND p.txn_count::float8 < f.p90_new
  AND p.txn_count >= f.waiting_floor_new
  AND NOT EXISTS (SELECT 1 FROM detected_patterns d
                  WHERE d.pattern_id = 'PatId1' AND d.merchant_id = p.merchant
                    AND d.customer_name = p.customer);
UPDATE chunk_merchants f
SET tier_count = t.pairs, tier_built = t.pairs
FROM (SELECT f.merchant,
             (SELECT count(*) FROM weight_order w WHERE w.merchant = f.merchant) AS pairs
      FROM chunk_merchants f
      WHERE f.mode = 'full') t
WHERE f.merchant = t.merchant;
"""

# What may fire: every pair of a merchant evaluated in full; otherwise the chunk's pairs, the
# waiting pairs p90 came down to, and the pairs p10 rose past (counts compared as the full
# evaluation always did: txn_count as a double against the percentile).
_CANDIDATES_SQL = """
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
_INSERT_DETECTIONS_SQL = f"""
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
_RECORD_SQL = """
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
    cur.execute(_CLASSIFY_SQL, params)
    full = [(merchant, reason, customers) for merchant, mode, reason, customers
            in cur.fetchall() if mode == "full"]
    cur.execute(_WALK_SQL)
    cur.execute(_LOST_SQL)
    lost = [merchant for (merchant,) in cur.fetchall()]
    if lost:
        log.error("rule structures disagree with the state: evaluated in full",
                  extra={"chunk_key": chunk_key, "merchants": lost})
    if full or lost:
        cur.execute(_FULL_PERCENTILE_SQL)
        cur.execute(_FULL_REBUILD_SQL)
    cur.execute(_CANDIDATES_SQL, params)
    cur.execute(_INSERT_DETECTIONS_SQL, params)
    rows = cur.fetchall()
    cur.execute(_RECORD_SQL, params)
    big = [f for f in full if f[1] != "new" or f[2] >= LOG_FULL_FROM_CUSTOMERS]
    if big:
        log.info("merchants evaluated in full", extra={
            "chunk_key": chunk_key,
            "merchants": [{"merchant": m, "reason": r, "customers": n} for m, r, n in big]})
    return rows
