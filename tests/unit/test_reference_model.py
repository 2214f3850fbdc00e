"""The reference model itself, checked against hand-computed cases of the detection rules."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_detector.chunk_aggregates import key_weights
from spark_detector.engine.rules import Thresholds
from spark_detector.parsing import ChunkRejected, parse_chunk, parse_customer_importance
from tests.reference_model import (
    ChunkRejectedWhole,
    ReferenceEngine,
    ReferenceRow,
    chunk_from_rows,
    percentile_cont,
    read_chunk,
    read_weight_rows,
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


def test_the_reference_reads_chunks_and_leaves_out_bad_rows():
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
    read = read_chunk(chunk)
    assert [(r.customer, r.merchant, r.category, r.gender, r.amount) for r in read.rows] == [
        ("C1", "M1", "es_food", "F", Decimal("4.56")), ("C2", "M1", "es_food", "M", Decimal("0"))]
    assert read.rejected == (3, 4, 5, 6, 7, 8)


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


# --- the reference reads input exactly as the rules say: the same verdict as the parser -------
#
# Every row of these corpora is judged twice - by the reference's own reading and by the
# worker's parser (spark_detector.parsing) - and the verdicts must agree row by row: left out,
# or kept with the same values. A rule read more loosely on either side fails here.

HEADER = "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud"
AMOUNTS = [
    # kept
    "12", "4.55", ".5", "5.", "+3", "0", "-0", "0005", "12.345", "12.344", "0.005", " 7.5 ",
    "\t7.5", "'7.5'", "9999999999999999.99", "9999999999999999.994", "0." + "0" * 40 + "1",
    # left out
    "1e3", "1E3", "1e-2", "1_000", "\u0661\u0662\u0663", "\uff11\uff12", "\u00b2", "12.5.1",
    ".", "+", "-", "", "''", "' '", "NaN", "nan", "inf", "-Infinity", "sNaN", "0x10", "-1",
    "-0.001", "\"12.5\"", "12,5", "\"1,000\"", "1 000", "9999999999999999.995",
    "10000000000000000", "9" * 40, "1e400", "12.5\r", "\u00a012.5",
]
NAMES = ["'C1'", "C1", "''", "' '", "'", "''''", " 'C1' ", "'C\u00e9'", "'\u5ba2\u6237'",
         "'C\"1'", "'C,1'", "\t", "'C1"]
# identifiers: the length limit (counted in characters, not bytes), control characters
# (Unicode's Cc, not other invisible ones), a formula's first character (after cleaning)
IDENTIFIERS = [
    "'" + "C" * 64 + "'", "C" * 65, "'" + "x" * 3000 + "'", "'" + "\u00e9" * 64 + "'",
    "'" + "\U0001f600" * 64 + "'", "'" + "\U0001f600" * 65 + "'",
    "'C\x011'", "'C\t1'", "'C\x1b'", "'\x7f'", "'C\x85'", "'C\x9f1'", "'C\u00a01'",
    "'C\u200b1'", "'C\u20281'", "'C\r1'",
    "'=1+1'", "=1+1", "'+C1'", "'-C1'", "-", "'@SUM(A1)'", " '=C1' ", "'C=1'", "'C-1'",
    "'\uff1dC1'", "''=C1''", "\t-1",
]


def chunk_rows() -> list[str]:
    rows = [f"0,'C1','4','F','28007','M1','28007','es_food',{a},0" for a in AMOUNTS]
    rows += [f"0,{n},'4','M','28007','M1','28007','es_food',1,0" for n in NAMES]
    rows += [f"0,'C1','4','U','28007',{n},'28007','',1,0" for n in NAMES]
    rows += [f"0,{n},'4','M','28007','M1','28007','es_food',1,0" for n in IDENTIFIERS]
    rows += [f"0,'C1','4','F','28007',{n},'28007','es_food',1,0" for n in IDENTIFIERS]
    rows += [f"0,'C1','4','F','28007','M1','28007',{n},1,0" for n in IDENTIFIERS]
    rows += [f"0,'C1','4',{n},'28007','M1','28007','es_food',1,0" for n in IDENTIFIERS]
    rows += [
        "", " ", "0,'C1','4','F','28007','M1','28007','es_food',1,0,",  # a trailing comma
        "0,'C1','4','F','28007','M1','28007','es_food',1",  # a field short
        "0,\"'C1','x'\",'4','F','28007','M1','28007','es_food',1,0",  # quoted comma
        "0,'C1','4','F','28007','M1','28007','es_food',1,0\r",  # CRLF
    ]
    return rows


def production_verdicts(data: bytes) -> str | dict[int, tuple | None]:
    try:
        parsed = parse_chunk("stream_chunks/c.csv", data)
    except ChunkRejected:
        return "rejected whole"
    verdicts: dict[int, tuple | None] = {r.row: None for r in parsed.rejected}
    for t in parsed.transactions:
        verdicts[t.row] = (t.customer, t.merchant, t.category, t.gender, t.amount)
    return verdicts


def reference_verdicts(data: bytes) -> str | dict[int, tuple | None]:
    try:
        read = read_chunk(data)
    except ChunkRejectedWhole:
        return "rejected whole"
    verdicts: dict[int, tuple | None] = {row: None for row in read.rejected}
    for r in read.rows:
        verdicts[r.row] = (r.customer, r.merchant, r.category, r.gender, r.amount)
    return verdicts


def test_the_reference_and_the_parser_give_every_bad_row_the_same_verdict():
    rows = chunk_rows()
    data = ("\n".join([HEADER, *rows]) + "\n").encode()
    reference, production = reference_verdicts(data), production_verdicts(data)
    assert sorted(reference) == list(range(1, len(rows) + 1))
    for n, line in enumerate(rows, start=1):
        assert reference[n] == production[n], f"row {n}: {line!r}"
    kept = {n for n, v in reference.items() if v is not None}
    assert 20 < len(kept) < len(rows) - 40  # both kinds, in numbers


@pytest.mark.parametrize("data", [
    b"", b"\n", b"  \n", HEADER.encode(), (HEADER + "\n").encode(),
    b"\xef\xbb\xbf" + (HEADER + "\r\n0,'C1','4','F','1','M1','1','x',1,0\r\n").encode(),
    (HEADER.replace("merchant,", "") + "\n1\n").encode(),  # a column missing
    (HEADER + ",amount\n").encode(),  # a column twice
    (HEADER + ",extra,extra\n0,'C1','4','F','1','M1','1','x',1,0,a,b\n").encode(),
    (b"amount,merchant,customer,category,gender,step,age,zipcodeOri,zipMerchant,fraud\n"
     b"7.5,'M2','C3','es_food','F',0,'3','1','2',0\n"),
    (HEADER + "\n0,'C\xe9','4','F','1','M1','1','x',1,0\n").encode("latin-1"),  # not UTF-8
    (HEADER + "\n0,'C\x001','4','F','1','M1','1','x',1,0\n").encode(),  # NUL
    (b"'step','customer','age','gender','zipcodeOri','merchant','zipMerchant','category',"
     b"'amount','fraud'\n0,C1,4,F,1,M1,1,x,1,0"),  # quoted names, no final newline
    (HEADER + "\n\n\n").encode(),  # empty lines before the last line ending
], ids=lambda d: repr(d[:24]))
def test_the_reference_and_the_parser_reject_the_same_chunks_whole(data):
    assert reference_verdicts(data) == production_verdicts(data)


# any text of number-like characters, and numbers of every form (signs, points, exponents)
AMOUNT_TEXTS = st.one_of(
    st.text(alphabet="0123456789+-.eE_ '\"\t,x\u0663\u00b2", max_size=12),
    st.from_regex(r"[ ']?[+-]?[0-9]{0,18}[.]?[0-9]{0,4}([eE][+-]?[0-9]{1,3})?[ ']?",
                  fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(AMOUNT_TEXTS)
def test_any_amount_text_gets_the_same_verdict(amount):
    data = f"{HEADER}\n0,'C1','4','F','1','M1','1','x',{amount},0\n".encode()
    assert reference_verdicts(data) == production_verdicts(data)


WEIGHTS = [
    # kept
    "2.5", "'2.5'", "0", "-0", "1.0000005", "7", "999999999999.999999",
    # left out
    "1e3", "-1", "NaN", "inf", "", "1_0", "\u0661", "1000000000000", "-0.0000001",
    "999999999999.9999995",  # rounds to 10^12: past decimal(22,10)
]


def test_the_reference_and_the_parser_keep_the_same_customer_importance_rows():
    rows = [f"'C1','M1',{w},'es_food',0" for w in WEIGHTS]
    rows += ["'','M1',1,'es_food',0", "'C1','',1,'es_food',0", " '' ,'M1',1,'x',0",
             "'C1','M1',1,'',0", "'C1','M1',1,'es_food'", "'C1','M1',1,'es_food',0,x", "",
             "'C\u00e9','M\u00e9',3,'es_food',0"]
    rows += [f"{n},'M1',1,'es_food',0" for n in IDENTIFIERS]
    rows += [f"'C1',{n},1,'es_food',0" for n in IDENTIFIERS]
    rows += [f"'C1','M1',1,{n},0" for n in IDENTIFIERS]
    data = ("Source,Target,Weight,typeTrans,fraud\r\n" + "\r\n".join(rows) + "\r\n").encode()
    parsed = parse_customer_importance(data)
    production = {r.row: None for r in parsed.rejected}
    read = read_weight_rows(data)
    reference = {row: None for row in read.left_out}
    reference.update({row: (key, weight) for row, key, weight in read.kept})
    for row, (key, weight) in zip(sorted(set(range(1, len(rows) + 1)) - set(production)),
                                  parsed.rows, strict=True):
        production[row] = (key, weight)
    for n, line in enumerate(rows, start=1):
        assert reference[n] == production[n], f"row {n}: {line!r}"
    assert read_weights(data) == key_weights(parsed.rows)


def test_the_reference_percentile_is_postgresqls_linear_interpolation():
    assert percentile_cont([], 0.5) is None
    assert percentile_cont([3.0], 0.9) == 3.0
    assert percentile_cont([1.0, 2.0, 2.0, 2.0, 4.0], 0.9) == pytest.approx(3.2)
    assert percentile_cont([5.0, 1.0, 2.0], 0.1) == pytest.approx(1.2)
    assert percentile_cont([1.0, 2.0], 1.0) == 2.0 and percentile_cont([1.0, 2.0], 0.0) == 1.0
