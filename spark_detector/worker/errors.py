"""The worker's domain errors, raised by its adapters (the database session, the Spark jobs, the
settling of a chunk) and sorted out in one place: the loop (``loop.Worker``) for the process,
``settle.Settler.run_for_chunk`` for one chunk."""

from __future__ import annotations


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL did not answer within the retry budget: an outage, not a chunk's fault."""


class SparkRuntimeLost(RuntimeError):
    """The Spark JVM is gone; this process cannot aggregate anything any more."""


class SparkJobFailed(RuntimeError):
    """A Spark job of these chunks failed while the runtime lives: the batch's fault, to be
    narrowed down chunk by chunk (its cause is the job's own error)."""

    def __init__(self, keys: list[str], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.keys = keys


class ChunkUnavailable(RuntimeError):
    """The chunk's object could not be read (missing, or access denied)."""
