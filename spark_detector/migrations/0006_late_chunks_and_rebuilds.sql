-- Late chunks keep the audit trail of their number, and a rebuild of the live database is
-- visible while it is incomplete (docs/database.md, docs/rebuild-and-what-if.md).
--
-- A chunk whose number was settled without it (skipped by an operator, or dead-lettered and
-- later redriven) is applied - or rejected, or dead-lettered again - late. The number's first
-- settlement stays as it was (outcome, chunk_key, reason, decided_by, marked_at); what
-- happened to the chunk that came late is recorded beside it.

ALTER TABLE sequence_marks
    ADD COLUMN late_outcome    text CHECK (late_outcome IN ('applied', 'rejected', 'dead_lettered')),
    ADD COLUMN late_chunk_key  text COLLATE "C",
    ADD COLUMN late_marked_at  timestamptz;

-- Before this migration a late apply overwrote its number's mark with 'applied'. Such a chunk
-- is recognisable: a chunk with a larger number was applied before it. Its number had been
-- skipped or dead-lettered; which of the two, and why, was lost with the overwrite.
UPDATE sequence_marks m
SET outcome = 'skipped',
    reason = 'settled without its chunk, which was applied late; why was not kept before'
             ' migration 0006',
    decided_by = NULL,
    chunk_key = NULL,
    late_outcome = 'applied',
    late_chunk_key = m.chunk_key,
    late_marked_at = m.marked_at
FROM processed_chunks p
WHERE m.outcome = 'applied'
  AND p.chunk_key = m.chunk_key
  AND EXISTS (SELECT 1 FROM processed_chunks q
              WHERE q.apply_order < p.apply_order AND q.seq > p.seq);

-- `replay --replace` writes this row before it starts and deletes it in the transaction that
-- installs the rebuilt tables. While it exists, workers refuse to start; `status` shows it;
-- running `replay --replace` again finishes the rebuild.
CREATE TABLE rebuild_in_progress (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_by    text NOT NULL,
    replay_order  text NOT NULL CHECK (replay_order IN ('recorded', 'keys')),
    runs          integer NOT NULL DEFAULT 1 CHECK (runs > 0)  -- 2 and more: resumed
);
