-- The detection engine's state, its audit trail and the detection outbox (SPEC sections 4-6).
-- Every write to these tables happens under the engine's advisory lock, so "max + 1" numbering
-- (apply_order, seq, file_no) is gap-free and equals the commit order.
-- Keys are text COLLATE "C": bytewise comparison is several times cheaper than a locale's in
-- the per-chunk index probes, and the order of names is the same on every server.

CREATE TABLE processed_chunks (
    chunk_key      text COLLATE "C" PRIMARY KEY,
    apply_order    integer NOT NULL UNIQUE CHECK (apply_order > 0),
    etag           text NOT NULL DEFAULT '',
    rows_good      integer NOT NULL CHECK (rows_good >= 0),
    rows_rejected  integer NOT NULL CHECK (rows_rejected >= 0),
    pairs          integer NOT NULL CHECK (pairs >= 0),
    detections     integer NOT NULL DEFAULT 0,
    event_time     timestamptz,              -- S3 event time, for latency figures
    applied_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    apply_ms       integer,                  -- time inside apply_chunk before commit
    spark_ms       integer                   -- time the Spark job spent parsing/aggregating
);

CREATE TABLE rejected_chunks (
    chunk_key       text COLLATE "C" PRIMARY KEY,
    reason          text NOT NULL,
    quarantine_key  text NOT NULL,
    etag            text NOT NULL DEFAULT '',
    event_time      timestamptz,
    rejected_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Cumulative state per (merchant, customer). avg_weight is derived in double precision because
-- percentile_cont works on double precision; weight_sum itself stays exact.
CREATE TABLE pair_state (
    merchant           text COLLATE "C" NOT NULL,
    customer           text COLLATE "C" NOT NULL,
    txn_count          bigint NOT NULL CHECK (txn_count > 0),
    amount_sum         numeric NOT NULL,
    weight_sum         numeric NOT NULL,
    weighted_count     bigint NOT NULL CHECK (weighted_count >= 0),
    gender             text NOT NULL,        -- gender on the first applied transaction
    first_apply_order  integer NOT NULL,
    last_apply_order   integer NOT NULL,
    avg_weight         double precision GENERATED ALWAYS AS (
        CASE WHEN weighted_count > 0 THEN weight_sum::double precision / weighted_count END
    ) STORED,
    PRIMARY KEY (merchant, customer)
) WITH (fillfactor = 80);                     -- room for HOT updates: the key never changes

CREATE TABLE merchant_state (
    merchant   text COLLATE "C" PRIMARY KEY,
    total      bigint NOT NULL,              -- transactions
    customers  integer NOT NULL,             -- distinct customers
    female     integer NOT NULL,             -- distinct customers whose pair gender is F
    male       integer NOT NULL              -- ... M
);

CREATE TABLE outbox_files (
    file_no       integer PRIMARY KEY CHECK (file_no > 0),
    first_seq     integer NOT NULL,
    last_seq      integer NOT NULL,
    detections    integer NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    s3_key        text,
    written_at    timestamptz,
    CHECK (last_seq - first_seq + 1 = detections)
);

CREATE TABLE detected_patterns (
    seq             integer PRIMARY KEY CHECK (seq > 0),
    pattern_id      text COLLATE "C" NOT NULL CHECK (pattern_id IN ('PatId1', 'PatId2', 'PatId3')),
    action_type     text NOT NULL,
    customer_name   text COLLATE "C" NOT NULL,           -- '' for PatId3
    merchant_id     text COLLATE "C" NOT NULL,
    -- evidence at the moment it fired (NULL where it does not apply)
    txn_count       bigint,
    amount_sum      numeric,
    avg_amount      numeric,
    avg_weight      double precision,
    p90_count       double precision,
    p10_weight      double precision,
    female          integer,
    male            integer,
    merchant_total  bigint,
    chunk_key       text COLLATE "C" NOT NULL REFERENCES processed_chunks (chunk_key),
    apply_order     integer NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    y_start_time    timestamptz NOT NULL,
    file_no         integer REFERENCES outbox_files (file_no),
    s3_key          text,
    UNIQUE (pattern_id, merchant_id, customer_name)
);

-- The outbox's "not yet in a file" set is small and scanned after every chunk.
CREATE INDEX detected_patterns_unfiled ON detected_patterns (seq) WHERE file_no IS NULL;
CREATE INDEX detected_patterns_file_no ON detected_patterns (file_no);
CREATE INDEX outbox_files_unwritten ON outbox_files (file_no) WHERE written_at IS NULL;
