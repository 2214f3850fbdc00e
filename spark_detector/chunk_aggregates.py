"""What one chunk contributes to the detection state: the contract between Spark and the engine.

The Spark job (``spark_detector.spark.job``) and the pure-Python builder below must produce
exactly the same ``ChunkAggregates`` for the same chunk; tests compare them. Everything here
is exact: amounts and weights are ``Decimal``, never float, so the state and therefore the
detections do not depend on how Spark partitions or orders a sum.

Semantics (docs/detection-semantics.md):
- one ``PairAggregate`` per (merchant, customer) seen in the chunk's valid rows;
- ``amount_sum`` is the exact sum of amounts (scale 2);
- a transaction is *weighted* when its (customer, merchant, category) key has a weight in
  CustomerImportance; ``weight_sum`` adds those keys' weights, ``weighted_count`` counts them;
- ``first_gender`` is the gender on the pair's first valid row of the chunk (lowest row number).

Key weights: each CustomerImportance ``Weight`` is read as a Decimal rounded half-up to
``WEIGHT_INPUT_PLACES`` places; a key's weight is the mean of its rows' weights rounded
half-up to ``KEY_WEIGHT_PLACES`` places (the scale Spark's ``avg`` gives a decimal(18,6)).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple

WEIGHT_INPUT_PLACES = 6
KEY_WEIGHT_PLACES = 10
AMOUNT_PLACES = 2

WeightKey = tuple[str, str, str]  # (customer, merchant, category)


@dataclass(frozen=True)
class Transaction:
    """One valid chunk row, already cleaned (quotes and whitespace stripped)."""

    row: int  # 1-based data row number within its chunk (the header is row 0)
    customer: str
    merchant: str
    category: str
    gender: str
    amount: Decimal


class PairAggregate(NamedTuple):
    """One (merchant, customer) pair's totals in one chunk. A named tuple, not a frozen
    dataclass: ~6,000 are built per chunk, and a frozen dataclass's ``__init__`` costs ~4x
    more (one ``object.__setattr__`` per field)."""

    merchant: str
    customer: str
    txn_count: int
    amount_sum: Decimal
    weight_sum: Decimal
    weighted_count: int
    first_gender: str


@dataclass(frozen=True)
class ChunkAggregates:
    """Everything the engine needs to apply one chunk; ``pairs`` sorted by (merchant, customer)."""

    chunk_key: str
    rows_good: int
    rows_rejected: int
    pairs: tuple[PairAggregate, ...]

    def merchants(self) -> set[str]:
        return {p.merchant for p in self.pairs}

    def without_pairs(self) -> ChunkAggregates:
        """The counts alone, for a chunk whose pairs were already written out as COPY text
        (``engine.state.prepare_pairs``); the engine refuses to apply it on its own."""
        return replace(self, pairs=())


def quantize(value: Decimal, places: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def key_weights(rows: Iterable[tuple[WeightKey, Decimal]]) -> dict[WeightKey, Decimal]:
    """Mean weight per (customer, merchant, category) key, from CustomerImportance rows."""
    sums: dict[WeightKey, Decimal] = {}
    counts: dict[WeightKey, int] = {}
    for key, weight in rows:
        sums[key] = sums.get(key, Decimal(0)) + quantize(weight, WEIGHT_INPUT_PLACES)
        counts[key] = counts.get(key, 0) + 1
    return {key: quantize(sums[key] / counts[key], KEY_WEIGHT_PLACES) for key in sums}


def build_aggregates(
    chunk_key: str,
    transactions: Iterable[Transaction],
    weights: Mapping[WeightKey, Decimal],
    rows_rejected: int = 0,
) -> ChunkAggregates:
    """The reference implementation of the per-chunk aggregation (Spark must match it)."""
    acc: dict[tuple[str, str], list] = {}
    rows_good = 0
    for txn in sorted(transactions, key=lambda t: t.row):
        rows_good += 1
        pair = (txn.merchant, txn.customer)
        if pair not in acc:
            acc[pair] = [0, Decimal(0), Decimal(0), 0, txn.gender]
        entry = acc[pair]
        entry[0] += 1
        entry[1] += txn.amount
        weight = weights.get((txn.customer, txn.merchant, txn.category))
        if weight is not None:
            entry[2] += weight
            entry[3] += 1
    pairs = tuple(
        PairAggregate(
            merchant=merchant,
            customer=customer,
            txn_count=count,
            amount_sum=quantize(amount_sum, AMOUNT_PLACES),
            weight_sum=weight_sum,
            weighted_count=weighted,
            first_gender=gender,
        )
        for (merchant, customer), (count, amount_sum, weight_sum, weighted, gender) in sorted(
            acc.items()
        )
    )
    return ChunkAggregates(chunk_key, rows_good, rows_rejected, pairs)
