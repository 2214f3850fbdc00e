"""A plain-Python, in-memory reference of the detection rules (docs/detection-semantics.md),
written independently of the SQL and of the worker's parsing.

Use it to check the engine (or a whole pipeline run) against the contract::

    model = ReferenceEngine(Thresholds(upgrade_min_total=20, child_min_count=3))
    fired = model.apply("chunk-1.csv", aggregates)  # [(patternId, merchant, customer)]
    model.pairs[("M1", "C1")].txn_count, model.merchants["M1"].female, model.detections[0].seq

    # A whole pipeline run: its own plain csv + Decimal reading of the files as stored, so a
    # bug in the worker's parsing or weighting (spark_detector.parsing / aggregates) is not
    # shared by the expectation.
    weights = read_weights(customer_importance_bytes)
    model.apply_rows(key, read_chunk(chunk_bytes), weights)

Semantics, straight from the docs: state is cumulative over all applied chunks; after each chunk,
the three rules are evaluated for every merchant the chunk touched (every customer of those
merchants); a detection key (patternId, MerchantId, customerName) fires at most once, ever.
New detections of one chunk are numbered in (patternId, MerchantId, customerName) order, text
compared by code point. Percentiles follow PostgreSQL's ``percentile_cont`` on double precision
bit for bit (``bench.measure.percentile_cont``); avg_weight is float(weight_sum) / weighted_count.
A chunk key seen before is ignored.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from bench.measure import percentile_cont
from spark_detector.chunk_aggregates import (
    ChunkAggregates,
    PairAggregate,
    Transaction,
    build_aggregates,
)
from spark_detector.detection_state import Thresholds

ACTION_TYPES = {"PatId1": "UPGRADE", "PatId2": "CHILD", "PatId3": "DEI-NEEDED"}

DetectionKey = tuple[str, str, str]  # (patternId, MerchantId, customerName)


@dataclass
class PairState:
    txn_count: int = 0
    amount_sum: Decimal = Decimal(0)
    weight_sum: Decimal = Decimal(0)
    weighted_count: int = 0
    gender: str = ""  # on the pair's first applied transaction
    first_chunk: str = ""

    @property
    def avg_weight(self) -> float | None:
        if self.weighted_count == 0:
            return None
        return float(self.weight_sum) / self.weighted_count


@dataclass
class MerchantState:
    total: int = 0
    customers: int = 0
    female: int = 0
    male: int = 0


@dataclass(frozen=True)
class ReferenceDetection:
    seq: int
    pattern_id: str
    action_type: str
    customer_name: str
    merchant_id: str
    chunk_key: str
    apply_order: int
    # evidence, None where it does not apply (as in the engine)
    txn_count: int | None = None
    amount_sum: Decimal | None = None
    avg_weight: float | None = None
    p90_count: float | None = None
    p10_weight: float | None = None
    female: int | None = None
    male: int | None = None
    merchant_total: int | None = None

    @property
    def key(self) -> DetectionKey:
        return (self.pattern_id, self.merchant_id, self.customer_name)


@dataclass
class ReferenceEngine:
    thresholds: Thresholds = field(default_factory=Thresholds)
    pairs: dict[tuple[str, str], PairState] = field(default_factory=dict)  # (merchant, customer)
    merchants: dict[str, MerchantState] = field(default_factory=dict)
    detections: list[ReferenceDetection] = field(default_factory=list)  # in seq order
    applied: list[str] = field(default_factory=list)  # chunk keys in apply order
    _customers_of: dict[str, dict[str, PairState]] = field(default_factory=dict, repr=False)

    def apply(self, chunk_key: str, aggregates: ChunkAggregates) -> list[DetectionKey]:
        """Apply one chunk's aggregates; the detection keys it fired, in seq order ([] for a
        seen chunk)."""
        if chunk_key in self.applied:
            return []
        self.applied.append(chunk_key)
        for pair in aggregates.pairs:
            state = self._pair(pair.merchant, pair.customer, pair.first_gender, chunk_key)
            state.txn_count += pair.txn_count
            state.amount_sum += pair.amount_sum
            state.weight_sum += pair.weight_sum
            state.weighted_count += pair.weighted_count
            self.merchants[pair.merchant].total += pair.txn_count
        return self._fire(chunk_key, aggregates.merchants())

    def apply_rows(self, chunk_key: str, rows: Iterable[ReferenceRow],
                   weights: Mapping[WeightKey, Decimal]) -> list[DetectionKey]:
        """Apply one chunk's valid rows (``read_chunk``) one by one, weighted with
        ``read_weights``: the same state as ``apply``, reached without the worker's
        aggregation."""
        if chunk_key in self.applied:
            return []
        self.applied.append(chunk_key)
        touched = set()
        for row in rows:
            state = self._pair(row.merchant, row.customer, row.gender, chunk_key)
            state.txn_count += 1
            state.amount_sum += row.amount
            weight = weights.get((row.customer, row.merchant, row.category))
            if weight is not None:
                state.weight_sum += weight
                state.weighted_count += 1
            self.merchants[row.merchant].total += 1
            touched.add(row.merchant)
        return self._fire(chunk_key, touched)

    def _pair(self, merchant: str, customer: str, gender: str, chunk_key: str) -> PairState:
        """The pair's state; a new pair takes this gender and counts for its merchant."""
        state = self.pairs.get((merchant, customer))
        merchant_state = self.merchants.setdefault(merchant, MerchantState())
        if state is None:
            state = PairState(gender=gender, first_chunk=chunk_key)
            self.pairs[(merchant, customer)] = state
            self._customers_of.setdefault(merchant, {})[customer] = state
            merchant_state.customers += 1
            merchant_state.female += gender == "F"
            merchant_state.male += gender == "M"
        return state

    def _fire(self, chunk_key: str, merchants: Iterable[str]) -> list[DetectionKey]:
        """Evaluate the touched merchants; number and record the keys that never fired."""
        fired = {d.key for d in self.detections}
        new = [d for d in self._evaluate(chunk_key, merchants) if d.key not in fired]
        new.sort(key=lambda d: d.key)
        start = len(self.detections)
        numbered = [
            ReferenceDetection(**{**d.__dict__, "seq": start + i + 1}) for i, d in enumerate(new)
        ]
        self.detections.extend(numbered)
        return [d.key for d in numbered]

    def _evaluate(self, chunk_key: str, merchants: Iterable[str]) -> list[ReferenceDetection]:
        t = self.thresholds
        order = len(self.applied)
        found: list[ReferenceDetection] = []

        def detection(pattern_id: str, merchant: str, customer: str, **evidence):
            return ReferenceDetection(
                0, pattern_id, ACTION_TYPES[pattern_id], customer, merchant, chunk_key, order,
                **evidence,
            )

        for m in merchants:
            ms = self.merchants[m]
            customers = self._customers_of[m]
            if ms.total > t.upgrade_min_total:
                p90 = percentile_cont(
                    (float(s.txn_count) for s in customers.values()), t.upgrade_count_percentile
                )
                p10 = percentile_cont(
                    (s.avg_weight for s in customers.values() if s.avg_weight is not None),
                    t.upgrade_weight_percentile,
                )
                for c, s in customers.items():
                    w = s.avg_weight
                    if p10 is not None and w is not None and s.txn_count >= p90 and w <= p10:
                        found.append(detection(
                            "PatId1", m, c, txn_count=s.txn_count, amount_sum=s.amount_sum,
                            avg_weight=w, p90_count=p90, p10_weight=p10, merchant_total=ms.total,
                        ))
            for c, s in customers.items():
                if (s.txn_count >= t.child_min_count
                        and s.amount_sum < t.child_max_avg_amount * s.txn_count):
                    found.append(detection(
                        "PatId2", m, c, txn_count=s.txn_count, amount_sum=s.amount_sum
                    ))
            if ms.female > t.dei_min_female and ms.female < ms.male:
                found.append(detection(
                    "PatId3", m, "", female=ms.female, male=ms.male, merchant_total=ms.total
                ))
        return found

    def fired_keys(self) -> list[tuple[DetectionKey, str]]:
        """(detection key, chunk after which it fired), in seq order."""
        return [(d.key, d.chunk_key) for d in self.detections]


@dataclass(frozen=True)
class ReferenceRow:
    """One valid transaction of a chunk, as the reference reads it."""

    customer: str
    merchant: str
    category: str
    gender: str
    amount: Decimal  # rounded half-up to cents


WeightKey = tuple[str, str, str]  # (customer, merchant, category)


def _unquote(value: str) -> str:
    """Surrounding blanks and one pair of single quotes off: ``'C123'`` -> ``C123``."""
    value = value.strip(" \t")
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == "'" else value


def _half_up(value: Decimal, places: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def _csv_rows(data: bytes) -> list[dict[str, str | None]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))


def read_weights(data: bytes) -> dict[WeightKey, Decimal]:
    """CustomerImportance with ``csv``: the mean Weight per (Source, Target, typeTrans), each
    Weight rounded half-up to 6 places and the mean to 10 (docs/detection-semantics.md)."""
    sums: dict[WeightKey, Decimal] = {}
    counts: dict[WeightKey, int] = {}
    for row in _csv_rows(data):
        key = (_unquote(row["Source"]), _unquote(row["Target"]), _unquote(row["typeTrans"]))
        sums[key] = sums.get(key, Decimal(0)) + _half_up(Decimal(_unquote(row["Weight"])), 6)
        counts[key] = counts.get(key, 0) + 1
    return {key: _half_up(sums[key] / counts[key], 10) for key in sums}


def read_chunk(data: bytes) -> list[ReferenceRow]:
    """A chunk's valid rows with ``csv``, in file order. A row is left out when its number of
    fields is not the header's, its customer or merchant is empty, or its amount is not a
    finite number >= 0 (the row rules of docs/detection-semantics.md)."""
    valid = []
    for row in _csv_rows(data):
        if None in row or None in row.values():  # more fields than the header, or fewer
            continue
        customer, merchant = _unquote(row["customer"]), _unquote(row["merchant"])
        try:
            amount = Decimal(_unquote(row["amount"]))
        except InvalidOperation:
            continue
        if not customer or not merchant or not amount.is_finite() or amount < 0:
            continue
        valid.append(ReferenceRow(customer, merchant, _unquote(row["category"]),
                                  _unquote(row["gender"]), _half_up(amount, 2)))
    return valid


def chunk_from_rows(
    chunk_key: str,
    rows: Sequence[tuple[str, str, str | Decimal, str] | tuple[str, str, str | Decimal, str, str]],
    weights: dict[tuple[str, str, str], Decimal] | None = None,
    rows_rejected: int = 0,
) -> ChunkAggregates:
    """Aggregates of a chunk from compact rows ``(customer, merchant, amount, gender[, category])``.

    Category defaults to ``es_food``; ``weights`` maps (customer, merchant, category) to a key
    weight, as ``aggregates.key_weights`` returns.
    """
    transactions = [
        Transaction(
            row=i + 1,
            customer=r[0],
            merchant=r[1],
            category=r[4] if len(r) > 4 else "es_food",
            gender=r[3],
            amount=Decimal(r[2]),
        )
        for i, r in enumerate(rows)
    ]
    return build_aggregates(chunk_key, transactions, weights or {}, rows_rejected)


_COPY_UNESCAPES = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}


def _copy_field(value: str) -> str:
    return re.sub(r"\\[\\tnr]", lambda m: _COPY_UNESCAPES[m.group()], value)


def pairs_from_copy_text(text: str) -> tuple[PairAggregate, ...]:
    """The pairs a COPY text (``spark_detector.pair_copy``) loads into ``chunk_pairs``, read
    back as PostgreSQL's COPY text format defines it: one line per pair, tab-separated."""
    pairs = []
    for line in text.split("\n")[:-1] if text else []:
        merchant, customer, count, amount, weight, weighted, gender = line.split("\t")
        pairs.append(PairAggregate(_copy_field(merchant), _copy_field(customer), int(count),
                                   Decimal(amount), Decimal(weight), int(weighted),
                                   _copy_field(gender)))
    return tuple(pairs)
