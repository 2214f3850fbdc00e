"""The rules' state tables, in SQL: the chunk's temp tables and the one statement that adds a
chunk's pairs to ``pair_state``, ``merchant_state`` and ``pair_count_histogram``
(``rule_evaluation.update_state``)."""

from __future__ import annotations

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
