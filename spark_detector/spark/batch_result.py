"""The batch query's result, back on the driver: per chunk its counts (``ChunkAggregates``)
and its pairs as COPY text (``pair_copy.PreparedPairs``), ready for its apply.

``assemble_batch`` weighs the query's rows with the key weights, merges them per (chunk,
merchant, customer), writes each chunk's pairs out as COPY text, sorts each chunk's rejected
rows, and checks that every data line of every chunk is accounted for. The pairs stay in
Arrow (C++) throughout.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from spark_detector.chunk_aggregates import KEY_WEIGHT_PLACES, ChunkAggregates, WeightKey
from spark_detector.pair_copy import COPY_COLUMNS, ESCAPES, PreparedPairs
from spark_detector.parsing import WEIGHT_INTEGER_DIGITS, RejectedRow
from spark_detector.spark.fetch import MISSING, REJECTED, SUPERSEDED
from spark_detector.spark.query import PAIR, REJECTED_ROW

_ZERO = Decimal(0)
# count x weight exactly: a key weight fits (12 + 10) digits, a group's count an int32, so
# their product fits decimal(33, 10) and a pair's sum Arrow's decimal(38, 10): never rounded
WEIGHT_TYPE = pa.decimal128(WEIGHT_INTEGER_DIGITS + KEY_WEIGHT_PLACES, KEY_WEIGHT_PLACES)
COUNT_TYPE = pa.decimal128(10, 0)


class BatchIntegrityError(RuntimeError):
    """The Spark result does not account for every line of a chunk: a bug, never bad input."""


@dataclass(frozen=True)
class BatchResult:
    """What one micro-batch produced; every requested chunk is in exactly one of the fields.

    - ``aggregates``: chunks that were read, their counts (``rows_rejected`` counts
      ``rejected_rows``); their pairs are in ``prepared``;
    - ``rejected_rows``: per read chunk, its rejected rows with reasons (empty tuple if none);
    - ``rejected_chunks``: chunks rejected whole ("Bad input" in docs/detection-semantics.md),
      with the reason;
    - ``missing_chunks``: keys whose object could not be found, with the reason (a failure
      of that chunk, not a bad chunk: it may appear, or the role may be fixed);
    - ``superseded_chunks``: keys whose version named by the message was overwritten before
      it was read, with the reason (neither a bad chunk nor a failure: the newer version's
      own event follows).
    """

    aggregates: dict[str, ChunkAggregates]
    rejected_rows: dict[str, tuple[RejectedRow, ...]]
    rejected_chunks: dict[str, str]
    missing_chunks: dict[str, str]
    # per chunk of ``aggregates`` (whose ``pairs`` are left empty): its pairs, as COPY text
    prepared: dict[str, PreparedPairs] = field(default_factory=dict)
    # S3 GET + whole-chunk checks on the executors, summed over tasks (part of the job's time)
    fetch_ms: float | None = None
    superseded_chunks: dict[str, str] = field(default_factory=dict)


def merged_results(results: Sequence[BatchResult]) -> BatchResult:
    """One result for the chunks of several jobs (a batch run in parts)."""
    if len(results) == 1:
        return results[0]
    fetch_ms = [r.fetch_ms for r in results if r.fetch_ms is not None]

    def merged(name: str) -> dict:
        return {key: value for r in results for key, value in getattr(r, name).items()}

    return BatchResult(merged("aggregates"), merged("rejected_rows"), merged("rejected_chunks"),
                       merged("missing_chunks"), merged("prepared"),
                       fetch_ms=sum(fetch_ms) if fetch_ms else None,
                       superseded_chunks=merged("superseded_chunks"))


def weight_table(weights: Mapping[WeightKey, Decimal]) -> pa.Table:
    """The key weights as the Arrow table ``assemble_batch`` joins: built once per weights
    version (~50,000 keys: ~60 ms, ~3 MiB, where the dict of tuples and Decimals takes ~15)."""
    keys = list(weights)
    return pa.table({
        "customer": pa.array([k[0] for k in keys], pa.string()),
        "merchant": pa.array([k[1] for k in keys], pa.string()),
        "category": pa.array([k[2] for k in keys], pa.string()),
        "weight": pa.array(list(weights.values()), WEIGHT_TYPE),
    })


NO_WEIGHTS = weight_table({})


def assemble_batch(keys: list[str], table: pa.Table, weights: pa.Table) -> BatchResult:
    """The ``aggregate_chunks`` result (its Arrow table) as a ``BatchResult``; every line counted.

    ``weights``: ``weight_table`` of the key weights. A row's transactions share one weight
    key (customer, merchant, category): they add ``txn_count x weight`` to the pair's weight
    sum, exactly what summing the weight row by row gives
    (``chunk_aggregates.build_aggregates``); an unweighted key adds nothing. All of it is
    Arrow compute (C++): the weights join, the merge of the (rare) pairs that span several
    rows, and the pairs' COPY text; no pair becomes a Python object (docs/performance.md).
    """
    # a chunk's status, reason and line count are on each of its rows (the grouping keys)
    status = {row["chunk_key"]: (row["status"], row["chunk_reason"], row["n_lines"])
              for row in table.group_by(
                  ["chunk_key", "status", "chunk_reason", "n_lines"]).aggregate([]).to_pylist()}
    pairs = _prepared_pairs(_weighted_pairs(table, weights))
    rejects = _rejected_rows(keys, table)

    aggregates: dict[str, ChunkAggregates] = {}
    prepared: dict[str, PreparedPairs] = {}
    rejected_rows: dict[str, tuple[RejectedRow, ...]] = {}
    rejected_chunks: dict[str, str] = {}
    missing: dict[str, str] = {}
    superseded: dict[str, str] = {}
    for key in keys:
        if key not in status:
            raise BatchIntegrityError(f"{key}: no result from the Spark job")
        state, reason, n_lines = status[key]
        if state == MISSING:
            missing[key] = reason or "object does not exist"
            continue
        if state == SUPERSEDED:
            superseded[key] = reason or "overwritten"
            continue
        if state == REJECTED:
            rejected_chunks[key] = reason or ""
            continue
        n_pairs, rows_good, copy_text = pairs.get(key, (0, 0, ""))
        chunk_rejects = rejects[key]
        if rows_good + len(chunk_rejects) != n_lines:
            raise BatchIntegrityError(
                f"{key}: {rows_good} good + {len(chunk_rejects)} rejected rows != {n_lines} lines"
            )
        aggregates[key] = ChunkAggregates(key, rows_good, len(chunk_rejects), ())
        prepared[key] = PreparedPairs(key, n_pairs, copy_text)
        rejected_rows[key] = chunk_rejects
    return BatchResult(aggregates, rejected_rows, rejected_chunks, missing, prepared,
                       superseded_chunks=superseded)


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


_WEIGHT_KEY = ("customer", "merchant", "category")
_PAIR_KEY = ("chunk_key", "merchant", "customer")


def _as_strings(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    """``table`` with ``names`` as Arrow strings, as ``weight_table`` has them (Spark hands
    large strings when spark.sql.execution.arrow.useLargeVarTypes is on)."""
    for name in names:
        i = table.schema.get_field_index(name)
        if not pa.types.is_string(table.schema.field(i).type):
            table = table.set_column(i, name, pc.cast(table.column(i), pa.string()))
    return table


def _weighted_pairs(table: pa.Table, weights: pa.Table) -> pa.Table:
    """One row per (chunk, merchant, customer), sorted so (bytewise, as
    ``ChunkAggregates.pairs``), with ``COPY_COLUMNS``."""
    rows = table.filter(pc.equal(table.column("kind"), PAIR)).select(
        ["chunk_key", "merchant", "customer", "category", "gender", "txn_count", "amount_sum",
         "first_row"])
    rows = _as_strings(rows, _WEIGHT_KEY)
    # Arrow hashes the right side: the smaller one (one chunk's ~6,300 rows against ~50,000
    # weights: 2.4 against 6.9 ms)
    if rows.num_rows < weights.num_rows:
        rows = weights.join(rows, keys=list(_WEIGHT_KEY), join_type="right outer",
                            use_threads=False)
    else:
        rows = rows.join(weights, keys=list(_WEIGHT_KEY), join_type="left outer",
                         use_threads=False)
    count = rows.column("txn_count")
    weighted = pc.is_valid(rows.column("weight"))
    weight_sum = pc.multiply(rows.column("weight"),
                             pc.cast(pc.cast(count, pa.int32()), COUNT_TYPE))
    rows = rows.append_column(
        "weight_sum", pc.fill_null(weight_sum, pa.scalar(_ZERO, weight_sum.type))
    ).append_column("weighted_count", pc.if_else(weighted, count, 0)).sort_by(
        [(name, "ascending") for name in (*_PAIR_KEY, "first_row")])
    if _pairs_repeat(rows):
        # a pair over several rows (categories, genders): sums, and its first row's gender
        # ("first" follows the input order, unthreaded only); the groups come in hash order
        rows = rows.group_by(list(_PAIR_KEY), use_threads=False).aggregate([
            ("txn_count", "sum"), ("amount_sum", "sum"), ("weight_sum", "sum"),
            ("weighted_count", "sum"), ("gender", "first"),
        ]).rename_columns([*_PAIR_KEY, "txn_count", "amount_sum", "weight_sum",
                           "weighted_count", "gender"]).sort_by(
            [(name, "ascending") for name in _PAIR_KEY])
    return rows.rename_columns(
        ["first_gender" if name == "gender" else name for name in rows.column_names])


def _pairs_repeat(rows: pa.Table) -> bool:
    """Whether two adjacent rows of ``rows`` (sorted by ``_PAIR_KEY``) are of one pair."""
    if rows.num_rows < 2:
        return False
    later, earlier = rows.slice(1), rows.slice(0, rows.num_rows - 1)
    same = [pc.equal(later.column(name), earlier.column(name)) for name in _PAIR_KEY]
    return pc.any(pc.and_(pc.and_(same[0], same[1]), same[2])).as_py()


def _prepared_pairs(pairs: pa.Table) -> dict[str, tuple[int, int, str]]:
    """Per chunk of ``pairs``: its pair count, its good rows and its pairs' COPY text."""
    # each chunk's rows are one run of the sorted table: the runs in that order are its slices
    runs = pairs.group_by("chunk_key", use_threads=False).aggregate([
        ([], "count_all"), ("txn_count", "sum")]).sort_by("chunk_key")
    counts = _column(runs, "count_all")
    texts = _joined_text(arrow_copy_lines(pairs), [0, *itertools.accumulate(counts)])
    return {key: (count, rows, text) for key, count, rows, text in zip(
        _column(runs, "chunk_key"), counts, _column(runs, "txn_count_sum"), texts,
        strict=True)}


def _rejected_rows(keys: list[str], table: pa.Table) -> dict[str, tuple[RejectedRow, ...]]:
    """Each chunk's rejected rows, in row order (few: built in Python)."""
    rejects: dict[str, list[RejectedRow]] = {key: [] for key in keys}
    reject_rows = table.filter(pc.equal(table.column("kind"), REJECTED_ROW)).sort_by(
        [("chunk_key", "ascending"), ("reject_row", "ascending")])
    for key, row, reason, line in zip(*(
            _column(reject_rows, name) for name in ("chunk_key", "reject_row", "reason", "line")),
            strict=True):
        rejects[key].append(RejectedRow(row, reason, line))
    return {key: tuple(rows) for key, rows in rejects.items()}


def _escaped_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    for plain, escaped in ESCAPES:
        column = pc.replace_substring(column, plain, escaped)
    return column


def arrow_copy_lines(pairs: pa.Table) -> pa.ChunkedArray:
    """One COPY line (with its newline) per row of ``pairs``, which has ``COPY_COLUMNS``
    (strings, integers and decimals, no nulls)."""
    text = []
    for name in COPY_COLUMNS:
        column = pairs.column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            text.append(_escaped_column(column))
        else:
            text.append(pc.cast(column, pa.string()))
    # the empty last field puts a newline after every line, not only between them
    return pc.binary_join_element_wise(
        pc.binary_join_element_wise(*text, "\t"), pa.scalar(""), "\n")


def _joined_text(lines: pa.ChunkedArray, offsets: list[int]) -> list[str]:
    """The concatenation of ``lines[offsets[i]:offsets[i + 1]]`` for each i, joined in C++."""
    runs = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), lines.combine_chunks())
    return pc.binary_join(runs, "").to_pylist()
