"""The BankSim-shaped generator: exact format, deterministic, the real file's proportions."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from producer import banksim_profile as profile
from producer.generate import generate, scaled_counts, systematic_allocation
from tests.support.producers import IMP_ROW, TXN_ROW

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "banksim_sample"
REAL_FIRST_ROW = "0,'C1093826151','4','M','28007','M348934600','28007','es_transportation',4.55,0"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    generate(out, rows=6000, seed=3)
    return out


def test_rows_have_the_real_files_exact_format(generated: Path):
    txn = (generated / "transactions.csv").read_text().splitlines()
    imp = (generated / "CustomerImportance.csv").read_text().splitlines()
    assert txn[0] == profile.TRANSACTION_HEADER
    assert imp[0] == profile.IMPORTANCE_HEADER
    assert TXN_ROW.match(REAL_FIRST_ROW)  # the pattern itself accepts the real data
    assert all(TXN_ROW.match(line) for line in txn[1:])
    assert all(IMP_ROW.match(line) for line in imp[1:])


def test_customer_importance_mirrors_the_transactions_row_by_row(generated: Path):
    with (generated / "transactions.csv").open() as t, (
        generated / "CustomerImportance.csv"
    ).open() as i:
        txns, imps = list(csv.DictReader(t)), list(csv.DictReader(i))
    assert len(txns) == len(imps) == 6000
    for txn, imp in zip(txns, imps, strict=True):
        assert (imp["Source"], imp["Target"], imp["Weight"], imp["typeTrans"], imp["fraud"]) == (
            txn["customer"], txn["merchant"], txn["amount"], txn["category"], txn["fraud"]
        )


def test_steps_ascend_and_customers_keep_their_gender_and_age(generated: Path):
    with (generated / "transactions.csv").open() as t:
        txns = list(csv.DictReader(t))
    steps = [int(r["step"]) for r in txns]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 179
    people = {(r["customer"], r["gender"], r["age"]) for r in txns}
    assert len(people) == len({r["customer"] for r in txns})
    assert {r["age"] for r in txns if r["gender"] == "'E'"} <= {"'U'"}


def test_merchant_and_category_counts_follow_the_real_proportions(generated: Path):
    with (generated / "transactions.csv").open() as t:
        txns = list(csv.DictReader(t))
    merchants = Counter(r["merchant"].strip("'") for r in txns)
    expected = scaled_counts({m: n for m, (n, _) in profile.MERCHANTS.items()}, 6000)
    assert merchants == Counter({m: n for m, n in expected.items() if n})
    assert {(r["merchant"].strip("'"), r["category"].strip("'")) for r in txns} <= {
        (m, c) for m, (_, c) in profile.MERCHANTS.items()
    }


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, rows=800, seed=11)
    generate(b, rows=800, seed=11)
    generate(c, rows=800, seed=12)
    for name in ("transactions.csv", "CustomerImportance.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()


def test_committed_sample_is_what_the_generator_writes(tmp_path: Path):
    generate(tmp_path, rows=3000, seed=7)
    for name in ("transactions.csv", "CustomerImportance.csv"):
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes(), name


def test_full_size_proportions_are_exact():
    counts = scaled_counts({m: n for m, (n, _) in profile.MERCHANTS.items()}, profile.FULL_ROWS)
    assert counts == {m: n for m, (n, _) in profile.MERCHANTS.items()}
    categories = Counter()
    for n, category in profile.MERCHANTS.values():
        categories[category] += n
    assert categories["es_transportation"] == 505_119 and categories["es_travel"] == 728


@pytest.mark.parametrize("offset", [0.0, 0.37, 0.999])
def test_systematic_allocation_is_exact_and_close_to_proportional(offset: float):
    weights = [0.1, 2.5, 0.0, 7.3, 1.1]
    counts = systematic_allocation(1000, weights, offset)
    assert sum(counts) == 1000
    for count, weight in zip(counts, weights, strict=True):
        assert abs(count - 1000 * weight / sum(weights)) < 1


def test_zero_rows_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="at least 1"):
        generate(tmp_path, rows=0)
