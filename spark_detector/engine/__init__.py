"""The detection engine: everything that runs inside the apply transaction in PostgreSQL.

``state.apply_chunk`` is the entry point: a chunk's aggregates added to the cumulative state,
the rules evaluated incrementally (``rule_evaluation``), production order checked
(``ordering``), detections numbered and closed into outbox files (``outbox``), all in one
transaction. ``rules`` owns the thresholds; ``failures`` and ``conflicts`` keep the per-chunk
records the worker settles; ``publish`` writes the outbox's closed files and the quarantine to
S3 after the commit. Nothing here imports Spark, the worker loop or the commands.
"""
