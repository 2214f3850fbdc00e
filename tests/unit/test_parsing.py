from decimal import Decimal

import pytest

from spark_detector.chunk_aggregates import Transaction
from spark_detector.parsing import (
    ChunkRejected,
    ReferenceRejected,
    RejectedRow,
    clean_field,
    parse_chunk,
    parse_customer_importance,
)
from tests.conftest import TEST_DATA

HEADER = "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud"


def chunk(*rows: str, header: str = HEADER, newline: str = "\n", final: bool = True) -> bytes:
    text = newline.join([header, *rows]) + (newline if final else "")
    return text.encode("utf-8")


def row(customer="'C1'", merchant="'M1'", amount="4.55", gender="'F'",
        category="'es_food'") -> str:
    return f"0,{customer},'4',{gender},'28007',{merchant},'28007',{category},{amount},0"


def reasons(data: bytes) -> list[tuple[int, str]]:
    return [(r.row, r.reason) for r in parse_chunk("k.csv", data).rejected]


def test_quotes_and_whitespace_are_stripped_from_every_string_field():
    parsed = parse_chunk("k.csv", chunk(row(customer=" 'C1' ", merchant="\t'M1'",
                                            gender="'M' ", category=" es_food",
                                            amount=" '4.55' ")))
    assert parsed.transactions == (Transaction(1, "C1", "M1", "es_food", "M", Decimal("4.55")),)


def test_only_one_pair_of_quotes_is_stripped():
    assert clean_field("''C1''") == "'C1'"
    assert clean_field("'") == "'"
    assert clean_field("'C1") == "'C1"


def test_crlf_and_lf_files_parse_the_same():
    rows = (row(customer="'C1'"), row(customer="'C2'", amount="1.5"))
    lf = parse_chunk("k.csv", chunk(*rows))
    crlf = parse_chunk("k.csv", chunk(*rows, newline="\r\n"))
    assert crlf == lf
    assert [t.customer for t in lf.transactions] == ["C1", "C2"]


def test_a_missing_final_line_ending_loses_nothing():
    assert parse_chunk("k.csv", chunk(row(), final=False)) == parse_chunk("k.csv", chunk(row()))


def test_utf8_byte_order_mark_is_accepted():
    parsed = parse_chunk("k.csv", b"\xef\xbb\xbf" + chunk(row()))
    assert len(parsed.transactions) == 1


def test_columns_are_located_by_header_name_and_extra_columns_are_allowed():
    header = "fraud,amount,category,zipMerchant,merchant,zipcodeOri,gender,age,customer,step,note"
    parsed = parse_chunk("k.csv", chunk("0,'2.50','es_bar','1','M9','2','F','3','C9',7,x",
                                        header=header))
    assert parsed.transactions == (Transaction(1, "C9", "M9", "es_bar", "F", Decimal("2.50")),)


def test_row_numbers_count_data_lines_after_the_header():
    parsed = parse_chunk("k.csv", chunk(row(customer="'C1'"), "bad", row(customer="'C3'")))
    assert [t.row for t in parsed.transactions] == [1, 3]
    assert parsed.rejected == (RejectedRow(2, "expected 10 fields, got 1", "bad"),)


def test_amounts_are_rounded_half_up_to_cents():
    parsed = parse_chunk("k.csv", chunk(row(amount="1.005"), row(amount="2.0049"),
                                        row(amount=".5"), row(amount="+3"), row(amount="7.")))
    assert [t.amount for t in parsed.transactions] == [
        Decimal("1.01"), Decimal("2.00"), Decimal("0.50"), Decimal("3.00"), Decimal("7.00"),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (row() + ",extra", "expected 10 fields, got 11"),
        ("0,'C1','4','F'", "expected 10 fields, got 4"),
        ("", "empty line"),
        (row(customer="''"), "empty customer"),
        (row(customer="  "), "empty customer"),
        (row(merchant="''"), "empty merchant"),
        (row(amount=""), "empty amount"),
        (row(amount="abc"), "amount 'abc' is not a decimal number"),
        (row(amount="1e3"), "amount '1e3' is not a decimal number"),
        (row(amount="1.2.3"), "amount '1.2.3' is not a decimal number"),
        (row(amount="inf"), "amount 'inf' is not a finite number"),
        (row(amount="NaN"), "amount 'NaN' is not a finite number"),
        (row(amount="-1"), "amount -1 is negative"),
        (row(amount="-0.001"), "amount -0.001 is negative"),
        (row(amount="12345678901234567"),
         "amount 12345678901234567 is too large for decimal(18,2)"),
        (row(amount="9999999999999999.995"),
         "amount 9999999999999999.995 is too large for decimal(18,2)"),
    ],
)
def test_each_bad_row_is_rejected_alone_with_its_reason(line: str, reason: str):
    parsed = parse_chunk("k.csv", chunk(row(customer="'C0'"), line, row(customer="'C2'")))
    assert parsed.rejected == (RejectedRow(2, reason, line),)
    assert [t.customer for t in parsed.transactions] == ["C0", "C2"]


LONG = "C" * 65
FORMULA = ", which a spreadsheet reads as a formula"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (row(customer=f"'{LONG}'"), "customer is longer than 64 characters (65)"),
        (row(customer="'" + "x" * 3000 + "'"), "customer is longer than 64 characters (3000)"),
        (row(merchant=f"'{LONG}'"), "merchant is longer than 64 characters (65)"),
        (row(category=f"'{LONG}'"), "category is longer than 64 characters (65)"),
        (row(gender=f"'{LONG}'"), "gender is longer than 64 characters (65)"),
        (row(customer="'C\t1'"), "customer contains a control character"),
        (row(merchant="'M\x1b[31m'"), "merchant contains a control character"),
        (row(category="'es\x7f'"), "category contains a control character"),
        (row(gender="'F\x85'"), "gender contains a control character"),
        (row(customer="'C\r1'"), "customer contains a control character"),
        (row(customer="'=HYPERLINK(1)'"), "customer starts with '='" + FORMULA),
        (row(customer=" '+C1' "), "customer starts with '+'" + FORMULA),
        (row(merchant="-M1"), "merchant starts with '-'" + FORMULA),
        (row(category="'@SUM(A1)'"), "category starts with '@'" + FORMULA),
        (row(gender="'=1'"), "gender starts with '='" + FORMULA),
        # the first check that fails gives the reason: the customer before the merchant,
        # length before control characters, identifiers before the amount
        (row(customer="'=C1'", merchant=f"'{LONG}'"), "customer starts with '='" + FORMULA),
        (row(customer="'=\x01" + "x" * 70 + "'"), "customer is longer than 64 characters (72)"),
        (row(customer="'=C1'", amount="abc"), "customer starts with '='" + FORMULA),
    ],
)
def test_an_identifier_too_long_with_a_control_character_or_a_formula_is_a_bad_row(
        line: str, reason: str):
    parsed = parse_chunk("k.csv", chunk(row(customer="'C0'"), line, row(customer="'C2'")))
    assert parsed.rejected == (RejectedRow(2, reason, line),)
    assert [t.customer for t in parsed.transactions] == ["C0", "C2"]


@pytest.mark.parametrize("value", [
    "C" * 64, "\U0001f600" * 64, "C=1", "C-1", "C 1", "M\u00a01", "C\u200b1", "\uff1dC1", "",
])
def test_identifiers_within_the_rules_are_kept_as_they_are(value: str):
    fields = {"customer": value or "C1", "merchant": value or "M1", "category": value,
              "gender": value}
    parsed = parse_chunk("k.csv", chunk(row(**{k: f"'{v}'" for k, v in fields.items()})))
    assert parsed.rejected == ()
    t = parsed.transactions[0]
    assert (t.customer, t.merchant, t.category, t.gender) == tuple(fields.values())


def test_customer_importance_rows_with_bad_identifiers_are_left_out_with_their_reason():
    data = ("Source,Target,Weight,typeTrans,fraud\n"
            f"'{LONG}','M1',1,'es_food',0\n"
            "'C1','=M1',1,'es_food',0\n"
            "'C1','M1',1,'es\x01food',0\n"
            "'C1','M1',2,'es_food',0\n").encode()
    parsed = parse_customer_importance(data)
    assert parsed.rows == ((("C1", "M1", "es_food"), Decimal("2.000000")),)
    assert [(r.row, r.reason) for r in parsed.rejected] == [
        (1, "Source is longer than 64 characters (65)"),
        (2, "Target starts with '='" + FORMULA),
        (3, "typeTrans contains a control character"),
    ]


def test_negative_zero_and_the_largest_amount_are_valid():
    parsed = parse_chunk("k.csv", chunk(row(amount="-0.00"), row(amount="9999999999999999.994")))
    assert [t.amount for t in parsed.transactions] == [
        Decimal("0.00"), Decimal("9999999999999999.99"),
    ]


def test_the_first_failing_check_gives_the_reason():
    assert reasons(chunk(row(customer="''", merchant="''", amount="x"))) == [(1, "empty customer")]


def test_an_empty_line_in_the_middle_is_a_rejected_row_but_the_last_one_is_not():
    assert reasons(chunk(row(), "", row())) == [(2, "empty line")]
    assert reasons(chunk(row(), "")) == [(2, "empty line")]  # two line endings at the end
    assert reasons(chunk(row())) == []


def test_a_header_only_chunk_is_valid_and_empty():
    assert parse_chunk("k.csv", chunk()) == parse_chunk("k.csv", chunk(final=False))
    assert parse_chunk("k.csv", chunk()).transactions == ()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty: no header line"),
        (b"\xef\xbb\xbf \r\n", "empty: no header line"),
        (b"step,customer\xff,age\n", "not UTF-8: invalid byte at offset 13"),
        (b"\x00\x01\x02" + chunk(row()), "not CSV: contains NUL characters"),
        (chunk(row(), header=HEADER.replace(",amount", "")),
         "header lacks required columns: amount"),
        (chunk(header="customer merchant amount"),
         "header lacks required columns: step, customer, age, gender, zipcodeOri, merchant, "
         "zipMerchant, category, amount, fraud"),
        (chunk(header=HEADER + ",amount"), "header repeats columns: amount"),
    ],
)
def test_bad_chunks_are_rejected_whole_with_the_reason(data: bytes, reason: str):
    with pytest.raises(ChunkRejected) as caught:
        parse_chunk("stream_chunks/c.csv", data)
    assert caught.value.key == "stream_chunks/c.csv"
    assert caught.value.reason == reason
    assert str(caught.value) == f"stream_chunks/c.csv: {reason}"


def test_the_real_banksim_format_parses_without_rejects():
    parsed = parse_chunk("k.csv", (TEST_DATA / "banksim-first-200.csv").read_bytes())
    assert len(parsed.transactions) == 200
    assert parsed.rejected == ()
    first = parsed.transactions[0]
    assert first == Transaction(1, "C1093826151", "M348934600", "es_transportation", "M",
                                Decimal("4.55"))


def test_customer_importance_rows_are_cleaned_and_bad_rows_are_returned():
    data = (
        b"Source,Target,Weight,typeTrans,fraud\r\n"
        b"'C1','M1',4.55,'es_food',0\r\n"
        b"'C1','M1',1.0000005,'es_food',0\r\n"
        b"'C2','M1',abc,'es_food',0\r\n"
        b"'C3','M1',-2,'es_food',0\r\n"
        b"'','M1',2,'es_food',0\r\n"
        b"'C4','M1'\r\n"
    )
    parsed = parse_customer_importance(data)
    assert parsed.rows == (
        (("C1", "M1", "es_food"), Decimal("4.550000")),
        (("C1", "M1", "es_food"), Decimal("1.000001")),
    )
    assert [(r.row, r.reason) for r in parsed.rejected] == [
        (3, "Weight 'abc' is not a decimal number"),
        (4, "Weight -2 is negative"),
        (5, "empty Source"),
        (6, "expected 5 fields, got 2"),
    ]


def test_customer_importance_without_a_weight_column_is_rejected():
    with pytest.raises(ReferenceRejected, match="lacks required columns: Weight"):
        parse_customer_importance(b"Source,Target,typeTrans,fraud\n'C1','M1','x',0\n")


def test_a_weight_that_rounds_past_decimal_22_10_is_a_bad_row_not_a_crash_later():
    from spark_detector.chunk_aggregates import key_weights
    from spark_detector.spark.batch_result import weight_table

    data = (b"Source,Target,Weight,typeTrans,fraud\n"
            b"'C1','M1',999999999999.999999,'es_food',0\n"
            b"'C2','M1',999999999999.9999995,'es_food',0\n")
    parsed = parse_customer_importance(data)
    assert [(r.row, r.reason) for r in parsed.rejected] == [
        (2, "Weight 999999999999.9999995 is too large for decimal(22,10)")]
    weight_table(key_weights(parsed.rows))  # the key weights fit their Arrow type
