from decimal import Decimal

from spark_detector.chunk_aggregates import (
    PairAggregate,
    Transaction,
    build_aggregates,
    key_weights,
)


def txn(row: int, customer: str, merchant: str, amount: str, gender: str = "F",
        category: str = "es_food") -> Transaction:
    return Transaction(row, customer, merchant, category, gender, Decimal(amount))


def test_key_weight_is_the_mean_of_duplicate_rows_rounded_half_up():
    weights = key_weights([
        (("C1", "M1", "es_food"), Decimal("1")),
        (("C1", "M1", "es_food"), Decimal("2")),
        (("C1", "M1", "es_food"), Decimal("2")),
        (("C2", "M1", "es_food"), Decimal("4.55")),
    ])
    assert weights[("C1", "M1", "es_food")] == Decimal("1.6666666667")
    assert weights[("C2", "M1", "es_food")] == Decimal("4.5500000000")


def test_pairs_count_sum_and_weight_only_matching_keys():
    weights = {("C1", "M1", "es_food"): Decimal("2.5")}
    result = build_aggregates(
        "stream_chunks/x.csv",
        [
            txn(2, "C1", "M1", "10.10", gender="M"),
            txn(1, "C1", "M1", "0.05", gender="F"),
            txn(3, "C1", "M1", "1.00", category="es_travel"),
            txn(4, "C2", "M1", "7"),
        ],
        weights,
        rows_rejected=3,
    )
    assert result.rows_good == 4
    assert result.rows_rejected == 3
    assert result.pairs == (
        PairAggregate("M1", "C1", 3, Decimal("11.15"), Decimal("5.0"), 2, "F"),
        PairAggregate("M1", "C2", 1, Decimal("7.00"), Decimal("0"), 0, "F"),
    )
