-- The CustomerImportance key weights, computed once per object version and read by every
-- later start-up instead of parsing the file again (spark_detector/reference_weights.py).
-- A set is identified by the object's ETag, which S3 changes whenever the bytes change;
-- it is written whole in one transaction, so a set that exists is complete.

CREATE TABLE reference_weight_sets (
    etag           text PRIMARY KEY,
    source         text NOT NULL,                -- s3://bucket/key it was computed from
    keys           integer NOT NULL,
    rows_rejected  integer NOT NULL,             -- CustomerImportance rows that were skipped
    computed_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE reference_weights (
    etag      text NOT NULL REFERENCES reference_weight_sets (etag) ON DELETE CASCADE,
    customer  text COLLATE "C" NOT NULL,
    merchant  text COLLATE "C" NOT NULL,
    category  text COLLATE "C" NOT NULL,
    weight    numeric(22, 10) NOT NULL,          -- the key's mean weight (docs/detection-semantics.md)
    PRIMARY KEY (etag, customer, merchant, category)
);
