"""The worker's domain errors, raised by its adapters (the database session, the Spark jobs, the
settling of a chunk) and sorted out in one place: the loop (``loop.Worker``) for the process,
``settle.Settler.run_for_chunk`` for one chunk."""

from __future__ import annotations

from dataclasses import dataclass

S3, SPARK = "s3", "spark"  # the dependencies an outage is of (``worker.outages``)


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


@dataclass(frozen=True)
class Outage:
    """A dependency is out: what failed, and for an operator, what to check."""

    dependency: str  # S3 or SPARK
    reason: str
    hint: str = ""


class DependencyOutage(RuntimeError):
    """Raised in the worker where a failure turns out to be a dependency's: stop intake."""

    def __init__(self, outage: Outage) -> None:
        super().__init__(f"{outage.dependency} unavailable: {outage.reason}")
        self.outage = outage
