"""The operator's commands besides ``run``: replay (rebuild and what-if), backfill, status
and skip-seq. They import the engine and the Spark job, never the worker loop.
"""
