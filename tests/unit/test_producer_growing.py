"""The growing data set (``producer.growing``): BankSim's format and concentration, customers
arriving throughout the file, deterministic, and written as a stream."""

from __future__ import annotations

import csv
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

from producer import banksim_profile as profile
from producer.__main__ import main
from producer.growing import generate_growing, merchant_table
from tests.unit.test_producer_generate import IMP_ROW, TXN_ROW

ROWS, CUSTOMERS = 20_000, 4_000


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("growing")
    generate_growing(out, rows=ROWS, customers=CUSTOMERS, merchants=60, seed=5,
                     importance_customers=1_000)
    return out


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_rows_have_the_real_files_exact_format(generated: Path):
    txn = (generated / "transactions.csv").read_text().splitlines()
    imp = (generated / "CustomerImportance.csv").read_text().splitlines()
    assert txn[0] == profile.TRANSACTION_HEADER and imp[0] == profile.IMPORTANCE_HEADER
    assert len(txn) == ROWS + 1
    assert all(TXN_ROW.match(line) for line in txn[1:])
    assert all(IMP_ROW.match(line) for line in imp[1:])


def test_new_customers_arrive_throughout_the_file(generated: Path):
    rows = read(generated / "transactions.csv")
    assert len({r["customer"] for r in rows}) == CUSTOMERS
    seen: set[str] = set()
    for tenth in range(10):
        part = {r["customer"] for r in rows[tenth * ROWS // 10:(tenth + 1) * ROWS // 10]}
        assert len(part - seen) == CUSTOMERS // 10
        seen |= part
    people = {(r["customer"], r["gender"], r["age"]) for r in rows}
    assert len(people) == CUSTOMERS  # a customer keeps its gender and age
    assert {r["age"] for r in rows if r["gender"] == "'E'"} <= {"'U'"}


def test_the_two_largest_merchants_take_banksims_share(generated: Path):
    rows = read(generated / "transactions.csv")
    merchants = Counter(r["merchant"].strip("'") for r in rows)
    (first, n1), (second, n2) = merchants.most_common(2)
    assert {first, second} == {"M1823072687", "M348934600"}
    assert 0.83 < (n1 + n2) / ROWS < 0.87
    categories = {m: c for m, c, _ in merchant_table(60, seed=5)}
    assert len(categories) == 60
    assert all(categories[r["merchant"].strip("'")] == r["category"].strip("'") for r in rows)


def test_customer_importance_mirrors_the_known_customers_rows(generated: Path):
    rows = read(generated / "transactions.csv")
    first_seen = list(dict.fromkeys(r["customer"] for r in rows))
    known = set(first_seen[:1_000])
    expected = [(r["customer"], r["merchant"], r["amount"], r["category"], r["fraud"])
                for r in rows if r["customer"] in known]
    got = [(r["Source"], r["Target"], r["Weight"], r["typeTrans"], r["fraud"])
           for r in read(generated / "CustomerImportance.csv")]
    assert got == expected


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        generate_growing(tmp_path / name, rows=3_000, customers=500, merchants=5, seed=seed)
    for name in ("transactions.csv", "CustomerImportance.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_memory_does_not_grow_with_the_rows(tmp_path: Path):
    peaks = []
    for rows in (5_000, 20_000):
        tracemalloc.start()
        generate_growing(tmp_path / str(rows), rows=rows, customers=1_000, seed=3)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.2 * peaks[0]


def test_the_command_line_chooses_the_growing_stream_and_checks_its_options(tmp_path: Path,
                                                                             capsys):
    assert main(["generate", "--out", str(tmp_path / "g"), "--rows", "500",
                 "--customers", "50", "--merchants", "3"]) == 0
    assert len({r["customer"] for r in read(tmp_path / "g" / "transactions.csv")}) == 50
    assert main(["generate", "--out", str(tmp_path / "x"), "--rows", "500",
                 "--merchants", "3"]) == 2
    assert "go with --customers" in capsys.readouterr().err
    assert main(["generate", "--out", str(tmp_path / "y"), "--rows", "50",
                 "--customers", "51"]) == 2
    assert main(["generate", "--out", str(tmp_path / "z"), "--rows", "50",
                 "--customers", "5", "--merchants", "1"]) == 2
