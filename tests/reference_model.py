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
bit for bit (``percentile_cont`` below); avg_weight is float(weight_sum) / weighted_count.
A chunk key seen before is ignored.

Input is read by this module's own code, straight from the rules of docs/detection-semantics.md
(no CSV quoting, fields stripped of blanks then one pair of single quotes, plain ASCII decimals,
the ranges of the types the state keeps, identifiers of at most 64 characters without control
characters or a formula's first character), never by ``spark_detector.parsing``: the tests compare
the two row by row (``tests/unit/test_reference_model.py``). The one thing shared with the
worker is the shape of its hand-over to the engine (``ChunkAggregates``), not how it is built.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from spark_detector.chunk_aggregates import ChunkAggregates, PairAggregate
from spark_detector.engine.rules import Thresholds

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


def percentile_cont(values: Iterable[float], fraction: float) -> float | None:
    """PostgreSQL's ``percentile_cont(fraction)`` on double precision (orderedsetaggs.c): the
    values sorted, rows ``floor`` and ``ceil`` of ``fraction * (n - 1)``, and between them
    ``low + proportion * (high - low)``; None over no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low_row, high_row = math.floor(position), math.ceil(position)
    low = ordered[low_row]
    if high_row == low_row:
        return low
    return low + (position - low_row) * (ordered[high_row] - low)


@dataclass(frozen=True)
class ReferenceRow:
    """One valid transaction of a chunk, as the reference reads it."""

    customer: str
    merchant: str
    category: str
    gender: str
    amount: Decimal  # rounded half-up to cents
    row: int = 0  # 1-based data row (the header is row 0)


@dataclass(frozen=True)
class ReferenceChunk:
    """What the reference makes of a chunk that is not rejected whole."""

    rows: tuple[ReferenceRow, ...]  # the valid rows, in file order
    rejected: tuple[int, ...]  # the data rows left out, by number


class ChunkRejectedWhole(ValueError):
    """The chunk as a whole breaks the rules (docs/detection-semantics.md, "Bad input")."""


WeightKey = tuple[str, str, str]  # (customer, merchant, category)

CHUNK_COLUMNS = ("step", "customer", "age", "gender", "zipcodeOri", "merchant", "zipMerchant",
                 "category", "amount", "fraud")
WEIGHT_COLUMNS = ("Source", "Target", "Weight", "typeTrans", "fraud")
ASCII_DIGITS = frozenset("0123456789")
AMOUNT_LIMIT = Decimal(10) ** 16  # decimal(18,2): 16 digits before the point
WEIGHT_LIMIT = Decimal(10) ** 12  # decimal(22,10): 12 digits before the point
BOM = "\ufeff"
IDENTIFIER_LIMIT = 64  # characters
FORMULA_FIRST = frozenset("=+-@")  # what a spreadsheet takes for a formula's start


def _unquote(value: str) -> str:
    """Surrounding spaces and tabs off, then one pair of single quotes: ``'C123'`` -> ``C123``."""
    value = value.strip(" \t")
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == "'" else value


def _is_identifier(value: str) -> bool:
    """Whether the rules keep ``value`` as a customer, merchant, category or gender (or
    Source, Target, typeTrans): at most 64 characters, none of them a control character
    (Unicode category Cc), the first not one that starts a spreadsheet formula."""
    return (len(value) <= IDENTIFIER_LIMIT
            and all(unicodedata.category(c) != "Cc" for c in value)
            and value[:1] not in FORMULA_FIRST)


def _half_up(value: Decimal, places: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def plain_decimal(text: str) -> Decimal | None:
    """``text`` as a number if it is a plain decimal: an optional sign, ASCII digits with at
    most one point and at least one digit (``12``, ``4.55``, ``.5``, ``5.``, ``+3``); no
    exponent, no separators, no other digits, nothing around it. None otherwise."""
    body = text[1:] if text[:1] in ("+", "-") else text
    whole, _, fraction = body.partition(".")
    if not whole + fraction or not set(whole + fraction) <= ASCII_DIGITS:
        return None
    value = Decimal(f"{whole or '0'}.{fraction or '0'}")
    return -value if text.startswith("-") else value


def _in_range(text: str, places: int, limit: Decimal) -> Decimal | None:
    """A plain decimal >= 0 rounded half-up to ``places``, if it stays below ``limit``."""
    value = plain_decimal(text)
    if value is None or value < 0 or value >= limit:  # (rounding a huge value would overflow)
        return None
    rounded = _half_up(value, places)
    return rounded if rounded < limit else None


def _lines(data: bytes) -> tuple[list[str], list[str]]:
    """(header fields, data lines) of a CSV object by the format rules: UTF-8 with an optional
    byte-order mark, LF or CRLF line endings, the last line ending not a row; no NUL."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ChunkRejectedWhole("not UTF-8") from exc
    text = text.removeprefix(BOM)
    if "\0" in text:
        raise ChunkRejectedWhole("contains NUL")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()  # the file's last line ending
    header = [_unquote(name) for name in lines[0].split(",")]
    return header, lines[1:]


def _columns(header: list[str], wanted: Sequence[str]) -> dict[str, int]:
    for name in wanted:
        if header.count(name) != 1:
            raise ChunkRejectedWhole(f"column {name!r} appears {header.count(name)} times")
    return {name: header.index(name) for name in wanted}


def read_chunk(data: bytes) -> ReferenceChunk:
    """A chunk's valid rows and the numbers of those left out, with this module's own reading
    of docs/detection-semantics.md: a row is left out when its number of comma-separated
    fields is not the header's (no CSV quoting: a quoted comma makes one field more), it is
    empty, its customer or merchant is empty, or its amount is not a plain decimal >= 0 that,
    rounded half-up to cents, fits decimal(18,2); or its customer, merchant, category or
    gender is no identifier (``_is_identifier``). Raises ``ChunkRejectedWhole``."""
    header, lines = _lines(data)
    at = _columns(header, CHUNK_COLUMNS)
    rows, rejected = [], []
    for number, line in enumerate(lines, start=1):
        fields = [_unquote(f) for f in line.split(",")]
        amount = _in_range(fields[at["amount"]], 2, AMOUNT_LIMIT) if len(
            fields) == len(header) else None
        if (amount is None or not fields[at["customer"]] or not fields[at["merchant"]]
                or not all(_is_identifier(fields[at[name]])
                           for name in ("customer", "merchant", "category", "gender"))):
            rejected.append(number)
            continue
        rows.append(ReferenceRow(fields[at["customer"]], fields[at["merchant"]],
                                 fields[at["category"]], fields[at["gender"]], amount, number))
    return ReferenceChunk(tuple(rows), tuple(rejected))


@dataclass(frozen=True)
class ReferenceWeightRows:
    kept: tuple[tuple[int, WeightKey, Decimal], ...]  # (row, key, Weight rounded to 6 places)
    left_out: tuple[int, ...]


def read_weight_rows(data: bytes) -> ReferenceWeightRows:
    """CustomerImportance's rows by the rules: left out when the number of fields is not the
    header's, Source or Target is empty, Weight is not a plain decimal >= 0 that, rounded
    half-up to 6 places, fits decimal(22,10), or Source, Target or typeTrans is no identifier
    (``_is_identifier``). Raises ``ChunkRejectedWhole`` for the file."""
    header, lines = _lines(data)
    at = _columns(header, WEIGHT_COLUMNS)
    kept, left_out = [], []
    for number, line in enumerate(lines, start=1):
        fields = [_unquote(f) for f in line.split(",")]
        weight = _in_range(fields[at["Weight"]], 6, WEIGHT_LIMIT) if len(
            fields) == len(header) else None
        if (weight is None or not fields[at["Source"]] or not fields[at["Target"]]
                or not all(_is_identifier(fields[at[name]])
                           for name in ("Source", "Target", "typeTrans"))):
            left_out.append(number)
            continue
        key = (fields[at["Source"]], fields[at["Target"]], fields[at["typeTrans"]])
        kept.append((number, key, weight))
    return ReferenceWeightRows(tuple(kept), tuple(left_out))


def read_weights(data: bytes) -> dict[WeightKey, Decimal]:
    """The mean Weight per (Source, Target, typeTrans) of the rows kept, rounded half-up to 10
    places (docs/detection-semantics.md)."""
    by_key: dict[WeightKey, list[Decimal]] = {}
    for _, key, weight in read_weight_rows(data).kept:
        by_key.setdefault(key, []).append(weight)
    return {key: _half_up(sum(ws, Decimal(0)) / len(ws), 10) for key, ws in by_key.items()}


def aggregate_rows(chunk_key: str, rows: Sequence[ReferenceRow],
                   weights: Mapping[WeightKey, Decimal], rows_rejected: int = 0
                   ) -> ChunkAggregates:
    """A chunk's hand-over to the engine, computed here from its valid rows (file order): per
    (merchant, customer) the count, the amount sum, the weights of its weighted rows and the
    gender of its first row; pairs in (merchant, customer) order."""
    pairs: dict[tuple[str, str], PairAggregate] = {}
    for r in rows:
        weight = weights.get((r.customer, r.merchant, r.category))
        before = pairs.get((r.merchant, r.customer)) or PairAggregate(
            r.merchant, r.customer, 0, Decimal("0.00"), Decimal(0), 0, r.gender)
        pairs[(r.merchant, r.customer)] = before._replace(
            txn_count=before.txn_count + 1, amount_sum=before.amount_sum + r.amount,
            weight_sum=before.weight_sum + (weight or 0),
            weighted_count=before.weighted_count + (weight is not None))
    return ChunkAggregates(chunk_key, len(rows), rows_rejected,
                           tuple(pairs[p] for p in sorted(pairs)))


def chunk_from_rows(
    chunk_key: str,
    rows: Sequence[tuple[str, str, str | Decimal, str] | tuple[str, str, str | Decimal, str, str]],
    weights: dict[tuple[str, str, str], Decimal] | None = None,
    rows_rejected: int = 0,
) -> ChunkAggregates:
    """Aggregates of a chunk from compact rows ``(customer, merchant, amount, gender[, category])``.

    Category defaults to ``es_food``; ``weights`` maps (customer, merchant, category) to a key
    weight, as ``read_weights`` returns.
    """
    return aggregate_rows(chunk_key, [
        ReferenceRow(r[0], r[1], r[4] if len(r) > 4 else "es_food", r[3], Decimal(r[2]), i + 1)
        for i, r in enumerate(rows)
    ], weights or {}, rows_rejected)


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
