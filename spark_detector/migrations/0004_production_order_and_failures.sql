-- Production order (docs/detection-semantics.md) and failure accounting (docs/architecture.md, docs/operations.md).
--
-- A producer chunk's name carries its sequence number (chunk-<seq>-<time>.csv). A sequenced
-- chunk is applied only when every smaller sequence number is settled: applied, rejected
-- whole, dead-lettered after its failure budget, or skipped by an operator. sequence_marks
-- holds the settled numbers; stream_position.next_seq is the smallest one not settled (the
-- chunk the stream waits for). Both are written only under the engine's advisory lock.

ALTER TABLE processed_chunks ADD COLUMN seq bigint;
ALTER TABLE rejected_chunks ADD COLUMN seq bigint;

CREATE TABLE sequence_marks (
    seq         bigint PRIMARY KEY CHECK (seq > 0),
    outcome     text NOT NULL CHECK (outcome IN ('applied', 'rejected', 'dead_lettered', 'skipped')),
    chunk_key   text COLLATE "C",                -- NULL for a skipped number
    reason      text,                            -- why it was rejected, dead-lettered or skipped
    decided_by  text,                            -- who skipped it (skip-seq)
    marked_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE stream_position (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    next_seq       bigint NOT NULL CHECK (next_seq > 0),
    waiting_since  timestamptz,                  -- set while a later chunk waits for next_seq
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Real processing failures of a chunk (not deliveries: a killed worker's redelivery is none).
CREATE TABLE chunk_failures (
    chunk_key         text COLLATE "C" PRIMARY KEY,
    seq               bigint,
    attempts          integer NOT NULL CHECK (attempts > 0),
    last_error        text NOT NULL,
    first_failed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_failed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    retry_after       timestamptz,               -- not tried again before this
    dead_lettered_at  timestamptz                -- moved to the DLQ by the worker
);

-- Chunks applied or rejected before this migration: their numbers are settled.
UPDATE processed_chunks
SET seq = substring(chunk_key FROM 'chunk-([0-9]{8})-[0-9]{8}T[0-9]{6}\.[0-9]{3}Z\.csv$')::bigint;
UPDATE rejected_chunks
SET seq = substring(chunk_key FROM 'chunk-([0-9]{8})-[0-9]{8}T[0-9]{6}\.[0-9]{3}Z\.csv$')::bigint;
INSERT INTO sequence_marks (seq, outcome, chunk_key)
SELECT DISTINCT ON (seq) seq, outcome, chunk_key FROM (
    SELECT seq, 'applied' AS outcome, chunk_key FROM processed_chunks WHERE seq > 0
    UNION ALL
    SELECT seq, 'rejected', chunk_key FROM rejected_chunks WHERE seq > 0
) settled
ORDER BY seq, outcome;

INSERT INTO stream_position (next_seq)
SELECT CASE
    WHEN NOT EXISTS (SELECT 1 FROM sequence_marks WHERE seq = 1) THEN 1
    ELSE (SELECT min(m.seq + 1) FROM sequence_marks m
          WHERE NOT EXISTS (SELECT 1 FROM sequence_marks n WHERE n.seq = m.seq + 1))
END;
