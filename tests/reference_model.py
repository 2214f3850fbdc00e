"""A plain-Python, in-memory reference of SPEC section 4, written independently of the SQL.

Use it to check the engine (or a whole pipeline run) against the contract::

    model = ReferenceEngine(Thresholds(upgrade_min_total=20, child_min_count=3))
    fired = model.apply("chunk-1.csv", aggregates)  # [(patternId, merchant, customer)]
    model.pairs[("M1", "C1")].txn_count, model.merchants["M1"].female, model.detections[0].seq

Semantics, straight from the SPEC: state is cumulative over all applied chunks; after each chunk,
the three rules are evaluated for every merchant the chunk touched (every customer of those
merchants); a detection key (patternId, MerchantId, customerName) fires at most once, ever.
New detections of one chunk are numbered in (patternId, MerchantId, customerName) order, text
compared by code point. Percentiles follow PostgreSQL's ``percentile_cont`` on double precision
bit for bit (``bench.measure.percentile_cont``); avg_weight is float(weight_sum) / weighted_count.
A chunk key seen before is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from bench.measure import percentile_cont
from spark_detector.aggregates import ChunkAggregates, Transaction, build_aggregates
from spark_detector.engine import Thresholds

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
        """Apply one chunk; the detection keys it fired, in seq order ([] for a seen chunk)."""
        if chunk_key in self.applied:
            return []
        self.applied.append(chunk_key)
        for pair in aggregates.pairs:
            state = self.pairs.get((pair.merchant, pair.customer))
            merchant = self.merchants.setdefault(pair.merchant, MerchantState())
            if state is None:
                state = PairState(gender=pair.first_gender, first_chunk=chunk_key)
                self.pairs[(pair.merchant, pair.customer)] = state
                self._customers_of.setdefault(pair.merchant, {})[pair.customer] = state
                merchant.customers += 1
                merchant.female += pair.first_gender == "F"
                merchant.male += pair.first_gender == "M"
            state.txn_count += pair.txn_count
            state.amount_sum += pair.amount_sum
            state.weight_sum += pair.weight_sum
            state.weighted_count += pair.weighted_count
            merchant.total += pair.txn_count
        fired = {d.key for d in self.detections}
        new = [
            d for d in self._evaluate(chunk_key, aggregates.merchants())
            if d.key not in fired
        ]
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
