"""The percentiles of the rules, in SQL (``rule_evaluation.evaluate``, steps 1-3): which
merchants are evaluated in full, the walk of p10's pivot along ``weight_order`` and p90 from
the count histogram, and the full evaluation and rebuild of a merchant's structures."""

from __future__ import annotations

# One row per merchant the chunk touched: how it is evaluated, its p90 (from the histogram) and
# where p10 must be looked for. The tier and the pivot move with the chunk's pairs: a pair
# leaves the tier with its old key and joins it with its new one.
# Percentiles as percentile_cont computes them: position = q * (n - 1); the value at the
# position's floor, interpolated towards the one at its ceiling.
CLASSIFY_SQL = """
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
WALK_SQL = """
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
LOST_SQL = """
UPDATE chunk_merchants
SET mode = 'full', reason = 'walk lost'
WHERE mode = 'incremental' AND weighted > 0 AND p10_new IS NULL
RETURNING merchant
"""

# Merchants evaluated in full: p10 and the pivot from one sort of their weights, the tier as
# many of the lowest weights as tier_target asks.
FULL_PERCENTILE_SQL = """
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
FULL_REBUILD_SQL = """
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
