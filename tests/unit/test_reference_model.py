"""The reference model itself, checked against hand-computed cases of the detection rules."""

from decimal import Decimal

from spark_detector.detection_state import Thresholds
from tests.reference_model import (
    ReferenceEngine,
    ReferenceRow,
    chunk_from_rows,
    read_chunk,
    read_weights,
)


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


def test_the_reference_reads_chunks_with_csv_and_leaves_out_bad_rows():
    chunk = (
        b"step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n"
        b"0,'C1','4','F','28007','M1','28007','es_food',4.555,0\n"  # half-up: 4.56
        b"0, 'C2' ,'4','M','28007','M1','28007','es_food',0,0\n"
        b"0,'C3','4','F','28007','M1','28007','es_food',-1,0\n"  # negative
        b"0,'','4','F','28007','M1','28007','es_food',1,0\n"  # no customer
        b"0,'C4','4','F','28007','M1','28007'\n"  # too few fields
        b"0,'C5','4','F','28007','M1','28007','es_food',1,0,extra\n"  # too many
        b"0,'C6','4','F','28007','M1','28007','es_food',NaN,0\n"  # not finite
        b"0,'C7','4','F','28007','M1','28007','es_food',ten,0\n"  # not a number
    )
    rows = read_chunk(chunk)
    assert [(r.customer, r.merchant, r.category, r.gender, r.amount) for r in rows] == [
        ("C1", "M1", "es_food", "F", Decimal("4.56")), ("C2", "M1", "es_food", "M", Decimal("0"))]


def test_the_reference_averages_weights_per_key_with_the_documented_rounding():
    importance = (b"Source,Target,Weight,typeTrans,fraud\n"
                  b"'C1','M1',1.0000005,'es_food',0\n"  # 6 places half-up: 1.000001
                  b"'C1','M1',2,'es_food',0\n"
                  b"'C1','M1',7,'es_bar',0\n")
    assert read_weights(importance) == {("C1", "M1", "es_food"): Decimal("1.5000005000"),
                                        ("C1", "M1", "es_bar"): Decimal("7")}


def test_rows_and_aggregates_reach_the_same_state():
    weights = {("C1", "M1", "es_food"): Decimal("2.5")}
    rows = [ReferenceRow("C1", "M1", "es_food", "F", Decimal("1.50")),
            ReferenceRow("C1", "M1", "es_bar", "M", Decimal("3.00"))]
    by_rows, by_aggregates = ReferenceEngine(), ReferenceEngine()
    by_rows.apply_rows("c1", rows, weights)
    by_aggregates.apply("c1", chunk_from_rows(
        "c1", [("C1", "M1", "1.50", "F", "es_food"), ("C1", "M1", "3.00", "M", "es_bar")],
        weights))
    assert by_rows.pairs == by_aggregates.pairs and by_rows.merchants == by_aggregates.merchants
