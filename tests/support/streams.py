"""Random streams of chunk aggregates for the engine's differential and property tests."""

from __future__ import annotations

import random
from decimal import Decimal

from spark_detector.chunk_aggregates import ChunkAggregates, PairAggregate

MERCHANTS = ("M1", "M2", "M3")
MERCHANT_SHARES = (6, 3, 1)
# few distinct weights, so that averages tie often
WEIGHTS = (Decimal("0"), Decimal("1.5"), Decimal("2"), Decimal("2.0000000001"), Decimal("7.25"),
           Decimal("100"))


def random_stream(rng: random.Random, chunks: int) -> list[ChunkAggregates]:
    """Chunks of pairs on three merchants of uneven size; a fifth of the pairs without any
    weighted transaction. Now and then a flood of new customers at count 1 (p90 comes down),
    half the time without weights (p10 stays); now and then new customers with the heaviest
    weights only (p10 rises)."""
    customers = 0
    stream = []
    for number in range(1, chunks + 1):
        kind = rng.choices(["mixed", "flood", "unweighted flood", "heavy"], [14, 2, 2, 2])[0]
        pairs: dict[tuple[str, str], PairAggregate] = {}
        for _ in range(rng.randint(1, 35) if kind == "mixed" else rng.randint(20, 60)):
            merchant = rng.choices(MERCHANTS, MERCHANT_SHARES)[0]
            if kind != "mixed" or customers == 0 or rng.random() < 0.3:
                customer = f"C{customers:04d}"
                customers += 1
            else:
                customer = f"C{rng.randrange(customers):04d}"
            count = 1 if "flood" in kind else rng.choice([1, 1, 2, 3, 5, 8])
            if kind == "unweighted flood" or (kind != "heavy" and rng.random() < 0.2):
                weighted, weight_sum = 0, Decimal(0)
            else:
                weighted = rng.randint(1, count)
                heaviest = WEIGHTS[-2:] if kind == "heavy" else WEIGHTS
                weight_sum = sum(rng.choice(heaviest) for _ in range(weighted))
            cents = rng.choice([500, 2299, 2300, 2301, 4000])
            pairs.setdefault((merchant, customer), PairAggregate(
                merchant, customer, count, Decimal(cents * count) / 100, Decimal(weight_sum),
                weighted, rng.choice("FFMMEU")))
        ordered = tuple(pairs[key] for key in sorted(pairs))
        stream.append(ChunkAggregates(f"chunk-{number:03d}", sum(p.txn_count for p in ordered),
                                      0, ordered))
    return stream
