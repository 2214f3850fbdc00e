-- A sequence number is applied at most once, and a chunk key in one version only
-- (docs/detection-semantics.md, docs/database.md).
--
-- A chunk carrying a number another chunk already holds (a second producer, a copy, a
-- re-upload under another name) is rejected whole as a duplicate: its rejected_chunks row
-- names the chunk that holds the number, and it settles nothing in sequence_marks.

ALTER TABLE rejected_chunks ADD COLUMN duplicate_of text COLLATE "C";

-- Versions of a chunk key that were not applied, and why:
-- 'overwritten': a message names another ETag of a key already applied or rejected (the key
--                was uploaded again with other content); it is recorded here, never applied;
-- 'superseded':  the version a message named was overwritten before the worker read it; the
--                current version, whose own event follows, is the one applied.
CREATE TABLE chunk_conflicts (
    chunk_key      text COLLATE "C" NOT NULL,
    etag           text NOT NULL,                -- the version not applied
    kind           text NOT NULL CHECK (kind IN ('overwritten', 'superseded')),
    settled_etag   text,                         -- 'overwritten': the version applied or rejected
    seen           integer NOT NULL DEFAULT 1 CHECK (seen > 0),  -- messages naming it
    first_seen_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_seen_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (chunk_key, etag, kind)
);
