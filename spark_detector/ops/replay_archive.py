"""The replay's inputs: the chunk archive listed, CustomerImportance read (the live one or
``--importance``), and the archive aggregated by one Spark job into an Arrow table that yields
one chunk's result at a time (``replay.run_replay``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Generic, TypeVar, cast

import pyarrow as pa
import pyarrow.compute as pc
from botocore.exceptions import ClientError

from chunk_contract.listing import list_chunks
from spark_detector.chunk_aggregates import WeightKey
from spark_detector.config import WorkerSettings
from spark_detector.ops.replay_plan import (
    ArchivedChunk,
    ReplayError,
)
from spark_detector.parsing import ReferenceRejected, iter_customer_importance
from spark_detector.spark.batch_result import BatchResult, assemble_batch, weight_table
from spark_detector.spark.job import FetchSpec, aggregate_chunks, fetch_chunks
from spark_detector.spark.reference_weights import (
    ACCESS_DENIED_HINT,
    access_denied,
    check_reference_size,
)

T = TypeVar("T")


def read_importance(s3, settings: WorkerSettings, uri: str | None) -> tuple[str, bytes]:
    """(where from, bytes) of the CustomerImportance to use: ``uri`` or the live one.

    Checked as the worker checks it, before anything is touched: ``ReferenceRejected`` when
    it is too large (known before it is read), not readable, empty, not UTF-8, not CSV or
    its header lacks a column. Its rows are parsed later (``compute_weights``)."""
    named = "--importance" if uri is not None else "CustomerImportance"
    if uri is None:
        uri = f"s3://{settings.bucket}/{settings.reference_key}"
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise ReplayError(f"--importance {uri}: expected s3://bucket/key")
        try:
            found = s3.get_object(Bucket=bucket, Key=key)
        except s3.exceptions.NoSuchKey as exc:
            raise ReplayError(f"{named} {uri}: no such object") from exc
        except ClientError as exc:
            if access_denied(exc):
                raise ReferenceRejected(uri, ACCESS_DENIED_HINT) from exc
            raise
        check_reference_size(uri, int(found["ContentLength"]), settings)
        where, data = uri, found["Body"].read()
    else:
        path = Path(uri)
        if not path.is_file():
            raise ReplayError(f"--importance {uri}: no such file")
        check_reference_size(str(path), path.stat().st_size, settings)
        where, data = str(path), path.read_bytes()
    iter_customer_importance(data, where)  # the whole-file checks, before the first row
    return where, data


def list_archive(s3, settings: WorkerSettings) -> list[ArchivedChunk]:
    return [
        ArchivedChunk(c.key, c.etag, c.last_modified, c.size)
        for c in list_chunks(s3, settings.bucket, settings.chunk_prefix, settings.chunk_suffix)
    ]


class ArchiveAggregates:
    """The Spark job's result for every chunk, as one Arrow table sorted by chunk key."""

    def __init__(self, table: pa.Table, weights: dict[WeightKey, Decimal]) -> None:
        self.weights = weight_table(weights)
        self.table = table.sort_by("chunk_key")
        counts = pc.value_counts(self.table["chunk_key"]).to_pylist()
        # Arrow sorts strings bytewise; UTF-8 byte order is code point order, as sorted()'s
        self.slices: dict[str, tuple[int, int]] = {}
        offset = 0
        for item in sorted(counts, key=lambda c: c["values"]):
            self.slices[item["values"]] = (offset, item["counts"])
            offset += item["counts"]

    def chunk(self, key: str) -> BatchResult:
        """One chunk's result, assembled and checked (every line counted) by the worker's code."""
        offset, length = self.slices.get(key, (0, 0))
        part = self.table.slice(offset, length)
        return assemble_batch([key], part, self.weights)


def aggregate_archive(spark, fetch_spec: FetchSpec, keys: list[str],
                      weights: dict[WeightKey, Decimal]) -> ArchiveAggregates:
    """ONE Spark job: every chunk fetched by the executors, parsed, validated, aggregated.

    The same query as a live micro-batch (``aggregate_chunks``), over the whole archive; the
    weights are applied chunk by chunk on the driver, as live.
    """
    query = aggregate_chunks(spark, fetch_chunks(spark, fetch_spec, sorted(set(keys))))
    return ArchiveAggregates(query.toArrow(), weights)


class Background(Generic[T]):
    """Run ``fn`` on a thread; ``result()`` joins and re-raises its error in the caller."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return cast(T, self._value)


