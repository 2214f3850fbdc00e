-- The seed implementation's column names (reference/seed-README.md), so its example queries run
-- unchanged: detected_patterns(customer, merchant, txn_count, avg_weight, avg_amount, txn_rank,
-- weight_rank, F, M, patternId, actionType, chunk_name, processed_at) and
-- processed_chunks(chunk_name). Generated from the canonical columns, never written directly.

ALTER TABLE detected_patterns
    ADD COLUMN customer     text GENERATED ALWAYS AS (customer_name) STORED,
    ADD COLUMN merchant     text GENERATED ALWAYS AS (merchant_id) STORED,
    ADD COLUMN txn_rank     double precision GENERATED ALWAYS AS (p90_count) STORED,
    ADD COLUMN weight_rank  double precision GENERATED ALWAYS AS (p10_weight) STORED,
    ADD COLUMN f            integer GENERATED ALWAYS AS (female) STORED,
    ADD COLUMN m            integer GENERATED ALWAYS AS (male) STORED,
    ADD COLUMN patternid    text GENERATED ALWAYS AS (pattern_id) STORED,
    ADD COLUMN actiontype   text GENERATED ALWAYS AS (action_type) STORED,
    ADD COLUMN chunk_name   text GENERATED ALWAYS AS (chunk_key) STORED,
    ADD COLUMN processed_at timestamptz GENERATED ALWAYS AS (detected_at) STORED;

ALTER TABLE processed_chunks
    ADD COLUMN chunk_name text GENERATED ALWAYS AS (chunk_key) STORED;
