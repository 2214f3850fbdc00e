"""The reference model itself, checked against hand-computed cases of SPEC section 4."""

from decimal import Decimal

from spark_detector.engine import Thresholds
from tests.reference_model import ReferenceEngine, chunk_from_rows


def test_a_pair_keeps_the_gender_of_its_first_transaction():
    model = ReferenceEngine(Thresholds(dei_min_female=0))
    model.apply("c1", chunk_from_rows("c1", [("C1", "M1", "1", "F"), ("C1", "M1", "1", "M")]))
    model.apply("c2", chunk_from_rows("c2", [("C1", "M1", "1", "M"), ("C2", "M1", "1", "E")]))
    assert model.pairs[("M1", "C1")].gender == "F"
    m1 = model.merchants["M1"]
    assert (m1.total, m1.customers, m1.female, m1.male) == (4, 2, 1, 0)


def test_each_key_fires_once_at_the_first_chunk_where_it_holds():
    model = ReferenceEngine(Thresholds(child_min_count=2))
    assert model.apply("c1", chunk_from_rows("c1", [("C1", "M1", "1", "F")])) == []
    assert model.apply("c2", chunk_from_rows("c2", [("C1", "M1", "1", "F")])) == [
        ("PatId2", "M1", "C1")
    ]
    assert model.apply("c3", chunk_from_rows("c3", [("C1", "M1", "900", "F")])) == []
    assert model.apply("c4", chunk_from_rows("c4", [("C1", "M1", "0", "F")] * 99)) == []
    assert model.apply("c2", chunk_from_rows("c2", [("C1", "M1", "1", "F")])) == []  # seen
    assert model.fired_keys() == [(("PatId2", "M1", "C1"), "c2")]
    assert model.pairs[("M1", "C1")].amount_sum == Decimal("902.00")


def test_a_customer_without_weight_never_upgrades():
    model = ReferenceEngine(Thresholds(upgrade_min_total=0))
    weights = {("C2", "M1", "es_food"): Decimal("1")}
    fired = model.apply("c1", chunk_from_rows(
        "c1", [("C1", "M1", "1", "F")] * 5 + [("C2", "M1", "1", "F")], weights))
    assert fired == []  # C1 has the top count but no weight; C2 has the weight but count 1
    assert model.pairs[("M1", "C1")].avg_weight is None
