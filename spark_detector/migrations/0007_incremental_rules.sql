-- Rule evaluation whose cost follows the chunk, not the state (spark_detector/rule_evaluation.py,
-- docs/database.md). Everything added here is derived from pair_state and can be rebuilt from
-- it: a merchant without a merchant_rule_state row is evaluated in full once, the next time a
-- chunk touches it, which (re)builds its rows of weight_order and waiting_pairs. Existing
-- databases get the histogram and the weighted-customer counts filled in below, and no rule
-- records.

-- The order of avg_weight, for PatId1's percentile of weights: the lowest weights of each
-- tracked merchant (its "tier": avg_weight <= merchant_rule_state.tier_limit). A table of its
-- own, not an index on pair_state: an index on a column every update changes would end HOT
-- updates of pair_state.
CREATE TABLE weight_order (
    merchant    text COLLATE "C" NOT NULL,
    avg_weight  double precision NOT NULL,
    customer    text COLLATE "C" NOT NULL,
    PRIMARY KEY (merchant, avg_weight, customer)
);

-- The pairs waiting for PatId1's count percentile to come down to them: avg_weight <=
-- p10_weight, waiting_floor <= txn_count < p90_count, key not fired (as of the merchant's last
-- evaluation).
CREATE TABLE waiting_pairs (
    merchant   text COLLATE "C" NOT NULL,
    txn_count  bigint NOT NULL,
    customer   text COLLATE "C" NOT NULL,
    PRIMARY KEY (merchant, txn_count, customer)
);

-- Customers of the merchant that have an avg_weight (the population of p10_weight).
ALTER TABLE merchant_state ADD COLUMN weighted integer NOT NULL DEFAULT 0;
UPDATE merchant_state m
SET weighted = w.pairs
FROM (SELECT merchant, count(*) AS pairs FROM pair_state WHERE weighted_count > 0
      GROUP BY merchant) w
WHERE m.merchant = w.merchant;

-- Customers per (merchant, txn_count): p90_count exactly, in time proportional to the number of
-- distinct counts. A count no customer has any more keeps its row, at 0.
CREATE TABLE pair_count_histogram (
    merchant   text COLLATE "C" NOT NULL REFERENCES merchant_state (merchant),
    txn_count  bigint NOT NULL CHECK (txn_count > 0),
    customers  integer NOT NULL,                 -- (no CHECK >= 0: a decrement is proposed as an insert)
    PRIMARY KEY (merchant, txn_count)
) WITH (fillfactor = 80);
INSERT INTO pair_count_histogram (merchant, txn_count, customers)
SELECT merchant, txn_count, count(*) FROM pair_state GROUP BY merchant, txn_count;

-- Per merchant, how its rules were last evaluated (after the last chunk that touched it).
CREATE TABLE merchant_rule_state (
    merchant        text COLLATE "C" PRIMARY KEY REFERENCES merchant_state (merchant),
    fingerprint     text NOT NULL,              -- the PatId1/PatId2 thresholds used
    tracked         boolean NOT NULL,           -- total > PatId1's minimum then: percentiles kept
    p90_count       double precision,           -- PatId1's percentiles then (NULL: not tracked,
    p10_weight      double precision,           -- or no weighted customer)
    pivot_weight    double precision NOT NULL,  -- (pivot_weight, pivot_customer): the key of the
    pivot_customer  text COLLATE "C" NOT NULL,  -- weight at p10's lower rank; '-Infinity', ''
    pivot_rank      bigint NOT NULL,            -- before the first; pairs ordered below it
    tier_limit      double precision NOT NULL,  -- its pairs with avg_weight <= this: weight_order
    tier_count      bigint NOT NULL,            -- how many
    tier_built      bigint NOT NULL,            -- how many when the tier was last built
    waiting_floor   bigint NOT NULL             -- waiting_pairs: counts from this one up
);
