"""``assemble_batch`` on hand-made query results: the pairs' COPY text equals the reference
model's aggregation (``tests/reference_model.aggregate_rows``), whichever side the weights
join hashes and whether a pair spans several result rows or not."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pytest

from spark_detector.chunk_aggregates import Transaction
from spark_detector.parsing import RejectedRow
from spark_detector.spark.batch_result import (
    NO_WEIGHTS,
    BatchIntegrityError,
    assemble_batch,
    weight_table,
)
from spark_detector.spark.fetch import OK, REJECTED
from spark_detector.spark.query import CHUNK, OUTPUT_COLUMNS, PAIR, REJECTED_ROW
from tests.reference_model import ReferenceRow, aggregate_rows, pairs_from_copy_text

AMOUNT = pa.decimal128(28, 2)
SCHEMA = pa.schema([
    ("chunk_key", pa.string()), ("kind", pa.string()), ("status", pa.string()),
    ("chunk_reason", pa.string()), ("n_lines", pa.int32()), ("merchant", pa.string()),
    ("customer", pa.string()), ("category", pa.string()), ("gender", pa.string()),
    ("txn_count", pa.int64()), ("amount_sum", AMOUNT), ("first_row", pa.int32()),
    ("reject_row", pa.int32()), ("reason", pa.string()), ("line", pa.string()),
])
assert tuple(SCHEMA.names) == OUTPUT_COLUMNS


def query_result(chunks: dict[str, list[Transaction]], rejects: dict[str, list[RejectedRow]]
                 ) -> pa.Table:
    """What ``aggregate_chunks`` returns for these chunks: a row per (chunk, merchant,
    customer, category, gender) group and per rejected row."""
    rows = []
    for key, transactions in chunks.items():
        n_lines = len(transactions) + len(rejects.get(key, []))
        groups: dict[tuple, list[Transaction]] = {}
        for t in transactions:
            groups.setdefault((t.merchant, t.customer, t.category, t.gender), []).append(t)
        for (merchant, customer, category, gender), members in groups.items():
            rows.append((key, PAIR, OK, None, n_lines, merchant, customer, category, gender,
                         len(members), sum(t.amount for t in members),
                         min(t.row for t in members), None, None, None))
        for r in rejects.get(key, []):
            rows.append((key, REJECTED_ROW, OK, None, n_lines, None, None, None, None, 1, None,
                         r.row, r.row, r.reason, r.line))
        if n_lines == 0:
            rows.append((key, CHUNK, OK, None, 0, *[None] * 4, 1, None, None, None, None,
                         None))
    rows.reverse()  # Spark returns groups in no particular order
    return pa.Table.from_pylist([dict(zip(OUTPUT_COLUMNS, r, strict=True)) for r in rows],
                                schema=SCHEMA)


def txn(row: int, customer: str, merchant: str, amount: str, gender: str = "F",
        category: str = "es_food") -> Transaction:
    return Transaction(row, customer, merchant, category, gender, Decimal(amount))


def assert_matches_reference(keys, table, weights, chunks, rejects=None):
    result = assemble_batch(keys, table, weight_table(weights))
    for key, transactions in chunks.items():
        rows = [ReferenceRow(t.customer, t.merchant, t.category, t.gender, t.amount, t.row)
                for t in sorted(transactions, key=lambda t: t.row)]
        expected = aggregate_rows(key, rows, weights, len((rejects or {}).get(key, [])))
        assert result.aggregates[key] == expected.without_pairs()
        assert pairs_from_copy_text(result.prepared[key].copy_text) == expected.pairs
        assert result.prepared[key].pairs == len(expected.pairs)
    return result


def test_one_row_per_pair_weighted_or_not():
    chunks = {"c1": [txn(1, "C1", "M1", "10.50"), txn(2, "C2", "M1", "3.00"),
                     txn(3, "C10", "M2", "0.01")]}
    weights = {("C1", "M1", "es_food"): Decimal("0.3333333333"),
               ("C10", "M2", "es_food"): Decimal("0.0000000001")}

    assert_matches_reference(["c1"], query_result(chunks, {}), weights, chunks)


def test_a_pair_over_several_rows_sums_them_and_keeps_its_first_rows_gender():
    chunks = {"c1": [txn(1, "C1", "M1", "1.00", "M", "es_health"),
                     txn(2, "C1", "M1", "2.00", "F", "es_food"),
                     txn(3, "C1", "M1", "4.00", "F", "es_health"),
                     txn(4, "C11", "M1", "8.00"), txn(5, "C2", "M1", "1.25")],
              "c2": [txn(1, "C1", "M1", "5.00", "U")]}
    weights = {("C1", "M1", "es_food"): Decimal("2.5"), ("C1", "M1", "es_health"): Decimal(1)}

    result = assert_matches_reference(["c1", "c2"], query_result(chunks, {}), weights, chunks)

    first = pairs_from_copy_text(result.prepared["c1"].copy_text)[0]
    assert (first.customer, first.txn_count, first.weight_sum, first.first_gender) == (
        "C1", 3, Decimal("4.5"), "M")


def test_the_weights_may_be_the_larger_or_the_smaller_side_of_the_join():
    transactions = [txn(i + 1, f"C{i % 7}", f"M{i % 3}", f"{i}.25") for i in range(40)]
    chunks = {"c1": transactions}
    few = {("C1", "M1", "es_food"): Decimal("1.5")}
    many = {(f"C{i}", f"M{j}", "es_food"): Decimal(i + j) / 7 for i in range(30) for j in range(3)}
    many = {k: v.quantize(Decimal("0.0000000001")) for k, v in many.items()}

    assert_matches_reference(["c1"], query_result(chunks, {}), few, chunks)
    assert_matches_reference(["c1"], query_result(chunks, {}), many, chunks)


def test_copy_text_escapes_backslashes_and_separators():
    chunks = {"c1": [txn(1, "C\\1", "M\t1", "1.00", "F\r"), txn(2, "C\n2", "M1", "2.00")]}

    result = assert_matches_reference(["c1"], query_result(chunks, {}), {}, chunks)

    assert result.prepared["c1"].copy_text.count("\n") == 2  # one line per pair


def test_rejected_rows_whole_rejections_and_empty_chunks():
    chunks = {"c1": [txn(1, "C1", "M1", "1.00")], "c2": []}
    rejects = {"c1": [RejectedRow(2, "empty merchant", "0,'C1',,x")]}
    table = query_result(chunks, rejects)
    rejected = pa.Table.from_pylist([dict(zip(OUTPUT_COLUMNS, (
        "c3", CHUNK, REJECTED, "not UTF-8", 0, *[None] * 4, 1, None, None, None, None, None),
        strict=True))], schema=SCHEMA)

    result = assemble_batch(["c1", "c2", "c3"], pa.concat_tables([table, rejected]),
                            NO_WEIGHTS)

    assert result.rejected_rows == {"c1": tuple(rejects["c1"]), "c2": ()}
    assert result.rejected_chunks == {"c3": "not UTF-8"}
    assert result.prepared["c2"].copy_text == "" and result.aggregates["c2"].rows_good == 0
    assert result.aggregates["c1"].rows_rejected == 1


def test_a_result_that_loses_a_line_is_refused():
    chunks = {"c1": [txn(1, "C1", "M1", "1.00"), txn(2, "C2", "M1", "1.00")]}
    table = query_result(chunks, {})
    short = table.slice(1)  # one pair row less than the chunk's lines

    with pytest.raises(BatchIntegrityError, match="1 good \\+ 0 rejected rows != 2 lines"):
        assemble_batch(["c1"], short, NO_WEIGHTS)
