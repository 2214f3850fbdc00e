"""A growing data set: ``python -m producer generate --customers N [--merchants M]``.

BankSim's file reuses its 4,112 customers from the first days on, so a stream of it stops adding
state after a few chunks. A real stream keeps adding customers. This generator writes a
``transactions.csv`` (and its ``CustomerImportance.csv``) in the same format, whose distinct
customers grow throughout the file:

- customer i makes its first transaction at about row i x rows / N, so new customers keep
  coming until the last row; every other row goes to a customer already seen, drawn in
  proportion to an activity level (the earlier a customer came, the more transactions it has);
- the merchants keep BankSim's concentration: the two largest (the transport merchants) take
  ``TOP_TWO_SHARE`` of the transactions, in BankSim's ratio; the others share the rest in
  proportion to BankSim's counts (its 48 other merchants, with their categories) and, beyond
  those, a Zipf tail of made-up merchants with BankSim's other categories;
- genders, ages, activity and spend levels (a few cheap commuters among them), categories,
  amounts (the category's mean x the customer's spend level x noise) and fraud rates as in
  ``producer.generate``; one merchant (M677738360) leans male, so PatId3 has a case;
- ``CustomerImportance.csv`` mirrors the transactions row by row, as BankSim's does, but only
  for the first ``importance_customers`` customers: reference data is computed for known
  customers; the ones that come later have no weight until it is computed again. (A row per
  transaction for every customer would make the reference file as large as the stream.)

It streams: rows are written as they are drawn; memory holds a few bytes per customer
(gender, age, spend, activity), never the rows. Same seed, same bytes.
"""

from __future__ import annotations

import bisect
import random
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from producer import banksim_profile as profile
from producer.generate import (
    AMOUNT_SHAPE,
    COMMUTER_ACTIVITY,
    COMMUTER_SHARE,
    COMMUTER_SPEND,
    IMPORTANCE_FILE,
    MALE_LEANING_MERCHANT,
    TRANSACTIONS_FILE,
    TRANSPORT,
    output_files,
)

TOP_TWO_SHARE = 0.85  # BankSim: 505,119 of 594,643 transactions
IMPORTANCE_CUSTOMERS = 20_000  # default: customers with CustomerImportance rows
MALE_LEANING_REDRAW = 0.5  # a woman drawn for the male-leaning merchant is redrawn this often
NAME_MODULUS = 2_147_483_647  # prime: i -> i * NAME_MULTIPLIER mod it is one-to-one
NAME_MULTIPLIER = 1_103_515_245
PROGRESS_EVERY = 1_000_000  # rows between two progress reports


@dataclass(frozen=True)
class GrowingSummary:
    rows: int
    customers: int
    merchants: int
    importance_rows: int
    transactions_path: Path
    importance_path: Path


def _name(prefix: str, number: int, seed: int) -> str:
    """A BankSim-looking identifier ('C1093826151'), distinct for distinct numbers."""
    return f"{prefix}{(number + 1 + seed) * NAME_MULTIPLIER % NAME_MODULUS}"


def merchant_table(count: int, seed: int) -> list[tuple[str, str, float]]:
    """(name, category, share of transactions) for ``count`` merchants, largest first."""
    if count < 2:
        raise ValueError(f"merchants must be at least 2, got {count}")
    real = sorted(profile.MERCHANTS.items(), key=lambda item: -item[1][0])
    top, others = real[:2], real[2:]
    assert {name for name, _ in top} == set(TRANSPORT)
    top_total = sum(n for _, (n, _) in top)
    table = [(name, category, TOP_TWO_SHARE * n / top_total) for name, (n, category) in top]
    rest = [(name, category, float(n)) for name, (n, category) in others[:count - 2]]
    categories = sorted({c for _, (_, c) in others})
    smallest = float(others[-1][1][0])
    taken = set(profile.MERCHANTS)
    for k in range(count - len(real)):  # a Zipf tail below BankSim's smallest merchant
        number = k
        while (name := _name("M", number, seed)) in taken:
            number += count
        taken.add(name)
        rest.append((name, categories[k % len(categories)], smallest * 50 / (51 + k)))
    rest_total = sum(w for _, _, w in rest) or 1.0
    share = (1 - TOP_TWO_SHARE) if rest else 0.0
    if not rest:  # two merchants: all of it
        table = [(n, c, s / TOP_TWO_SHARE) for n, c, s in table]
    return table + [(n, c, share * w / rest_total) for n, c, w in rest]


def generate_growing(out_dir: Path, rows: int, customers: int, merchants: int = 50,
                     seed: int = 0, importance_customers: int = IMPORTANCE_CUSTOMERS,
                     progress: Callable[[int], None] | None = None) -> GrowingSummary:
    """Write ``transactions.csv`` and ``CustomerImportance.csv`` of a growing stream."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    if not 1 <= customers <= rows:
        raise ValueError(f"customers must be between 1 and rows ({rows}), got {customers}")
    if importance_customers < 0:
        raise ValueError(f"importance customers must be >= 0, got {importance_customers}")
    rng = random.Random(seed)
    table = merchant_table(merchants, seed)
    cumulative, running = [], 0.0
    for _, _, share in table:
        running += share
        cumulative.append(running)
    prefixes = [(f"'{name}','{profile.ZIP_CODE}','{category}',", f"'{name}',", f",'{category}',",
                 profile.CATEGORIES[category][0], profile.CATEGORIES[category][1])
                for name, category, _ in table]
    male_leaning = next((i for i, (name, _, _) in enumerate(table)
                         if name == MALE_LEANING_MERCHANT), -1)

    genders = list(profile.GENDER_SHARES)
    gender_weights = list(profile.GENDER_SHARES.values())
    ages = [*profile.AGE_SHARES, "U"]  # enterprises ('E') have age 'U'
    age_weights = list(profile.AGE_SHARES.values())
    gender_of, age_of = bytearray(customers), bytearray(customers)
    spend_of, activity_of = array("f", bytes(4 * customers)), array("f", bytes(4 * customers))
    most_active = 1.0

    def new_customer(customer: int) -> None:
        """Draw a customer as ``producer.generate.make_customers`` does, kept in a few bytes."""
        nonlocal most_active
        gender = rng.choices(range(len(genders)), gender_weights)[0]
        gender_of[customer] = gender
        age_of[customer] = (len(ages) - 1 if genders[gender] == "E"
                            else rng.choices(range(len(age_weights)), age_weights)[0])
        activity = rng.gammavariate(6.0, 1 / 6)
        spend = rng.lognormvariate(-0.03**2 / 2, 0.03)
        if rng.random() < COMMUTER_SHARE:
            activity = COMMUTER_ACTIVITY * rng.uniform(0.9, 1.2)
            spend = COMMUTER_SPEND * rng.uniform(0.9, 1.1)
        activity_of[customer], spend_of[customer] = activity, spend
        most_active = max(most_active, activity)

    random_, gamma, scale = rng.random, rng.gammavariate, 1 / AMOUNT_SHAPE
    arrived = importance_rows = 0
    with output_files(out_dir) as (txn, imp):
        for row in range(rows):
            merchant = bisect.bisect_left(cumulative, random_() * running)
            merchant = min(merchant, len(table) - 1)
            if arrived < customers and arrived * rows <= row * customers:
                customer = arrived  # the next new customer's first transaction
                new_customer(customer)
                arrived += 1
            else:
                while True:  # an earlier customer, in proportion to its activity
                    customer = int(random_() * arrived)
                    if random_() * most_active > activity_of[customer]:
                        continue
                    if (merchant == male_leaning and genders[gender_of[customer]] == "F"
                            and random_() < MALE_LEANING_REDRAW):
                        continue
                    break
            name = _name("C", customer, seed)
            txn_prefix, imp_merchant, imp_category, mean, fraud_rate = prefixes[merchant]
            amount = repr(round(mean * spend_of[customer] * gamma(AMOUNT_SHAPE, scale), 2))
            fraud = "1" if random_() < fraud_rate else "0"
            gender = genders[gender_of[customer]]
            step = row * profile.STEPS // rows
            txn.write(f"{step},'{name}','{ages[age_of[customer]]}','{gender}',"
                      f"'{profile.ZIP_CODE}',{txn_prefix}{amount},{fraud}\n")
            if customer < importance_customers:
                imp.write(f"'{name}',{imp_merchant}{amount}{imp_category}{fraud}\n")
                importance_rows += 1
            if progress is not None and (row + 1) % PROGRESS_EVERY == 0:
                progress(row + 1)
    return GrowingSummary(rows=rows, customers=arrived, merchants=len(table),
                          importance_rows=importance_rows,
                          transactions_path=out_dir / TRANSACTIONS_FILE,
                          importance_path=out_dir / IMPORTANCE_FILE)

