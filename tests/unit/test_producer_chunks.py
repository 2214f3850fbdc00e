"""Chunk naming and chunking: pure functions over bytes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from chunk_contract.layout import chunk_key, chunk_seq
from producer.chunks import (
    BadHeader,
    check_header,
    iter_chunks,
    skip_rows,
)

HEADER = b"step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n"


def rows(n: int, start: int = 0) -> list[bytes]:
    return [
        f"0,'C{i}','4','M','28007','M1','28007','es_food',{i}.5,0\n".encode()
        for i in range(start, start + n)
    ]


def test_chunk_key_has_zero_padded_sequence_and_utc_milliseconds():
    when = datetime(2026, 11, 27, 9, 31, 2, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert chunk_key("stream_chunks/", 7, when) == (
        "stream_chunks/chunk-00000007-20261127T040102.123Z.csv"
    )


def test_chunk_keys_sort_in_production_order_even_when_the_clock_goes_back():
    later = datetime(2026, 1, 1, tzinfo=UTC)
    earlier = later - timedelta(hours=1)
    keys = [chunk_key("p/", 9, later), chunk_key("p/", 10, earlier), chunk_key("p/", 100, later)]
    assert sorted(keys) == keys


def test_chunk_seq_reads_the_number_back_and_ignores_other_keys():
    key = chunk_key("stream_chunks/", 42, datetime(2026, 1, 1, tzinfo=UTC))
    assert chunk_seq(key, "stream_chunks/") == 42
    assert chunk_seq("stream_chunks/notes.txt", "stream_chunks/") is None


def test_sequence_numbers_outside_eight_digits_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        chunk_key("p/", 0, datetime(2026, 1, 1, tzinfo=UTC))


def test_rows_are_grouped_with_the_header_repeated_and_bytes_unchanged():
    data = rows(25)
    chunks = list(iter_chunks(HEADER, iter(data), 10, first_seq=1, first_row=0))
    assert [(c.seq, c.first_row, c.rows) for c in chunks] == [(1, 0, 10), (2, 10, 10), (3, 20, 5)]
    assert chunks[0].body == HEADER + b"".join(data[:10])
    assert chunks[2].body == HEADER + b"".join(data[20:])


def test_crlf_and_malformed_rows_pass_through_untouched():
    data = [b"0,'C1','4','M','28007','M1','28007','es_food',1.5,0\r\n", b"garbage,,\"x\n", b"1,2\n"]
    (chunk,) = iter_chunks(HEADER, iter(data), 10, first_seq=5, first_row=100)
    assert chunk.body == HEADER + b"".join(data)
    assert (chunk.seq, chunk.first_row, chunk.rows) == (5, 100, 3)


def test_last_line_without_newline_gets_one_and_blank_lines_are_not_rows():
    data = [b"a\n", b"\n", b"\r\n", b"b"]
    (chunk,) = iter_chunks(HEADER, iter(data), 10, first_seq=1, first_row=0)
    assert chunk.body == HEADER + b"a\nb\n"
    assert chunk.rows == 2


def test_skip_rows_counts_data_rows_and_reports_a_short_file():
    lines = iter([b"a\n", b"\n", b"b\n", b"c\n"])
    assert skip_rows(lines, 2) == 2
    assert next(lines) == b"c\n"
    assert skip_rows(iter([b"a\n"]), 5) == 1


def test_header_with_bom_quotes_and_crlf_is_accepted_and_bom_dropped():
    line = b"\xef\xbb\xbf" + HEADER.replace(b"customer", b"'customer'").replace(b"\n", b"\r\n")
    assert check_header(line) == line[3:]


def test_header_missing_columns_names_them():
    with pytest.raises(BadHeader, match="merchant, amount"):
        check_header(b"step,customer,age,gender,zipcodeOri,zipMerchant,category,fraud\n")


def test_header_that_is_not_utf8_is_refused():
    with pytest.raises(BadHeader, match="UTF-8"):
        check_header(b"\xff\xfe" + HEADER)
