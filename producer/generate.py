"""A BankSim-shaped data generator: ``transactions.csv`` and ``CustomerImportance.csv``.

The real files cannot be downloaded here, so tests and benchmarks use generated ones with the
same format and shape (see ``banksim_profile``). Customers are persistent people: a gender and
age, an activity level, a spend level and favourite merchants. The three detection patterns
then arise from that behaviour rather than from planted rows:

- a small segment of *commuters* (many cheap rides) lands at the top of the transaction-count
  and the bottom of the weight distribution at the two big transport merchants (PatId1), and
  has 80+ rides under 23 on average with one of them (PatId2);
- small merchants draw somewhat more women than men, except one (M677738360, as in the real
  data) whose clientele leans male (PatId3).

The plan (how many transactions each customer has with each merchant, and on which days) is
drawn first; rows are then written day by day, so the output streams to disk. The plan holds
4 bytes per row, not the rows themselves.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from producer import banksim_profile as profile

TRANSPORT = ("M1823072687", "M348934600")
MALE_LEANING_MERCHANT = "M677738360"
FEMALE_AFFINITY = 1.3  # small merchants: women are the majority of their customers...
MALE_LEANING_FEMALE_AFFINITY = 0.65  # ...except at one merchant, the PatId3 case
COMMUTER_SHARE = 0.003
COMMUTER_ACTIVITY = 1.8
COMMUTER_SPEND = 0.72
COMMUTER_TRANSPORT_AFFINITY = 1.6
AMOUNT_SHAPE = 4.0  # gamma shape of one transaction's amount around the customer's mean

TRANSACTIONS_FILE = "transactions.csv"
IMPORTANCE_FILE = "CustomerImportance.csv"


@dataclass(frozen=True)
class Customer:
    name: str
    age: str
    gender: str
    activity: float  # relative number of transactions
    spend: float  # multiplier on the category's mean amount
    transport_affinity: float  # how much of the customer's activity is transport
    first_transport_share: float  # share of transport going to TRANSPORT[0]


@dataclass(frozen=True)
class Pair:
    customer: int  # index into the customer list
    merchant: str
    count: int


@dataclass(frozen=True)
class GenerationSummary:
    rows: int
    customers: int
    merchants: int
    pairs: int
    transactions_path: Path
    importance_path: Path


def scaled_counts(totals: Mapping[str, int], rows: int) -> dict[str, int]:
    """Split ``rows`` in the proportions of ``totals`` exactly (largest remainder)."""
    whole = sum(totals.values())
    exact = {key: rows * value / whole for key, value in totals.items()}
    counts = {key: math.floor(value) for key, value in exact.items()}
    short = rows - sum(counts.values())
    by_remainder = sorted(totals, key=lambda key: (-(exact[key] - counts[key]), key))
    for key in by_remainder[:short]:
        counts[key] += 1
    return counts


def systematic_allocation(total: int, weights: Sequence[float], offset: float) -> list[int]:
    """Integer counts proportional to ``weights`` summing exactly to ``total``.

    Systematic rounding: a customer whose share is 2.3 gets 2 or 3, never 0 or 5, and the
    counts always add up, which keeps each merchant's total exact.
    """
    weight_sum = sum(weights)
    counts = []
    cumulative = 0.0
    previous = math.floor(offset)
    for weight in weights:
        cumulative += total * weight / weight_sum
        current = math.floor(cumulative + offset)
        counts.append(current - previous)
        previous = current
    counts[-1] += total - sum(counts)  # float dust on the last customer only
    return counts


def step_weights(steps: int) -> list[float]:
    """Relative number of rows per day: a linear ramp, as in the real file."""
    if steps == 1:
        return [1.0]
    first, last = profile.FIRST_STEP_ROWS, profile.LAST_STEP_ROWS
    return [first + (last - first) * step / (steps - 1) for step in range(steps)]


def make_customers(rng: random.Random, count: int) -> list[Customer]:
    genders = list(profile.GENDER_SHARES)
    gender_weights = list(profile.GENDER_SHARES.values())
    ages = list(profile.AGE_SHARES)
    age_weights = list(profile.AGE_SHARES.values())
    names: set[str] = set()
    customers = []
    spend_sigma = 0.03
    for _ in range(count):
        name = f"C{rng.randrange(10_000_000, 2_147_483_647)}"
        while name in names:
            name = f"C{rng.randrange(10_000_000, 2_147_483_647)}"
        names.add(name)
        gender = rng.choices(genders, gender_weights)[0]
        age = "U" if gender == "E" else rng.choices(ages, age_weights)[0]
        activity = rng.gammavariate(6.0, 1 / 6)
        spend = rng.lognormvariate(-spend_sigma**2 / 2, spend_sigma)
        transport_affinity = rng.uniform(0.85, 1.15)
        if rng.random() < COMMUTER_SHARE:
            activity = COMMUTER_ACTIVITY * rng.uniform(0.9, 1.2)
            spend = COMMUTER_SPEND * rng.uniform(0.9, 1.1)
            transport_affinity = COMMUTER_TRANSPORT_AFFINITY
        customers.append(
            Customer(
                name=name,
                age=age,
                gender=gender,
                activity=activity,
                spend=spend,
                transport_affinity=transport_affinity,
                first_transport_share=rng.betavariate(0.59 * 30, 0.41 * 30),
            )
        )
    return customers


def _merchant_weights(rng: random.Random, customers: Sequence[Customer], merchant: str) -> list:
    if merchant == TRANSPORT[0]:
        return [c.activity * c.transport_affinity * c.first_transport_share for c in customers]
    if merchant == TRANSPORT[1]:
        return [
            c.activity * c.transport_affinity * (1 - c.first_transport_share) for c in customers
        ]
    female = MALE_LEANING_FEMALE_AFFINITY if merchant == MALE_LEANING_MERCHANT else FEMALE_AFFINITY
    # Squared exponential taste: most customers never visit a small merchant, a few are regulars.
    return [
        c.activity / c.transport_affinity * (female if c.gender == "F" else 1.0)
        * rng.expovariate(1.0) ** 2
        for c in customers
    ]


def plan_pairs(
    rng: random.Random, customers: Sequence[Customer], merchant_rows: Mapping[str, int]
) -> list[Pair]:
    pairs = []
    for merchant, total in merchant_rows.items():
        weights = _merchant_weights(rng, customers, merchant)
        if total == 0:
            continue
        counts = systematic_allocation(total, weights, rng.random())
        pairs.extend(
            Pair(index, merchant, count) for index, count in enumerate(counts) if count
        )
    return pairs


def plan_days(rng: random.Random, pairs: Sequence[Pair], steps: int) -> list[array]:
    """For each day, the pair index of each of its transactions (shuffled)."""
    cum_weights = []
    running = 0.0
    for weight in step_weights(steps):
        running += weight
        cum_weights.append(running)
    days = [array("I") for _ in range(steps)]
    day_range = range(steps)
    for index, pair in enumerate(pairs):
        for day in rng.choices(day_range, cum_weights=cum_weights, k=pair.count):
            days[day].append(index)
    for day in days:
        rng.shuffle(day)
    return days


@contextmanager
def output_files(out_dir: Path) -> Iterator[tuple[TextIO, TextIO]]:
    """``transactions.csv`` and ``CustomerImportance.csv`` in ``out_dir``, open for writing
    with their header lines written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer_size = 1 << 20
    with (
        open(out_dir / TRANSACTIONS_FILE, "w", encoding="utf-8", newline="",
             buffering=buffer_size) as txn,
        open(out_dir / IMPORTANCE_FILE, "w", encoding="utf-8", newline="",
             buffering=buffer_size) as imp,
    ):
        txn.write(profile.TRANSACTION_HEADER + "\n")
        imp.write(profile.IMPORTANCE_HEADER + "\n")
        yield txn, imp


def generate(out_dir: Path, rows: int = profile.FULL_ROWS, seed: int = 0) -> GenerationSummary:
    """Write ``transactions.csv`` and ``CustomerImportance.csv`` (same rows, same order)."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    rng = random.Random(seed)
    # Keep the real density of transactions per customer at any size.
    scaled = round(profile.CUSTOMERS * rows / profile.FULL_ROWS)
    customer_count = min(profile.CUSTOMERS, max(10, scaled))
    customers = make_customers(rng, customer_count)
    merchant_rows = scaled_counts({m: n for m, (n, _) in profile.MERCHANTS.items()}, rows)
    pairs = plan_pairs(rng, customers, merchant_rows)
    days = plan_days(rng, pairs, profile.STEPS)

    zip_code = profile.ZIP_CODE
    txn_prefix, imp_prefix, imp_suffix, mean_amount, fraud_rate = [], [], [], [], []
    for pair in pairs:
        customer = customers[pair.customer]
        category = profile.MERCHANTS[pair.merchant][1]
        mean, fraud = profile.CATEGORIES[category]
        txn_prefix.append(
            f"'{customer.name}','{customer.age}','{customer.gender}','{zip_code}',"
            f"'{pair.merchant}','{zip_code}','{category}',"
        )
        imp_prefix.append(f"'{customer.name}','{pair.merchant}',")
        imp_suffix.append(f",'{category}',")
        mean_amount.append(mean * customer.spend)
        fraud_rate.append(fraud)

    transactions_path, importance_path = out_dir / TRANSACTIONS_FILE, out_dir / IMPORTANCE_FILE
    gamma, uniform = rng.gammavariate, rng.random
    scale = 1 / AMOUNT_SHAPE
    with output_files(out_dir) as (txn, imp):
        for step, day in enumerate(days):
            for index in day:
                amount = repr(round(mean_amount[index] * gamma(AMOUNT_SHAPE, scale), 2))
                fraud = "1" if uniform() < fraud_rate[index] else "0"
                txn.write(f"{step},{txn_prefix[index]}{amount},{fraud}\n")
                imp.write(f"{imp_prefix[index]}{amount}{imp_suffix[index]}{fraud}\n")
    return GenerationSummary(
        rows=rows,
        customers=customer_count,
        merchants=sum(1 for n in merchant_rows.values() if n),
        pairs=len(pairs),
        transactions_path=transactions_path,
        importance_path=importance_path,
    )
