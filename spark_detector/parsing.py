"""The input rules of docs/detection-semantics.md in plain Python: how a chunk's bytes become
valid transactions and rejects.

This module is the reference the Spark job (``spark_detector.spark.job``) must agree with, row
for row and reason for reason; tests compare the two. The chunk-level steps (decoding, the
header, line endings) are done here once per chunk and are shared with the Spark job's
executors, so a chunk is rejected whole for the same reason on both paths. The row-level
rules are written twice on purpose - here with ``Decimal``, there with Spark expressions -
and ``tests/integration/test_spark_job.py`` checks they agree.

Format rules, beyond the documented ones:
- Fields are separated by commas; there is no CSV quoting (BankSim has no embedded commas),
  so a double-quoted value containing a comma shows up as a row with too many fields.
- Every field is stripped of surrounding spaces and tabs, then of one pair of single quotes.
- Lines end in LF or CRLF; a final empty line (the file's last line ending) is ignored, any
  other empty line is a rejected row.
- An amount is a plain decimal (``12``, ``4.55``, ``.5``, ``+3``; no exponent), rounded half-up
  to 2 places, at least 0 and within ``decimal(18,2)``.
- The text values the state keeps (customer, merchant, category, gender; Source, Target,
  typeTrans) are identifiers (``identifier_problem``): at most ``MAX_IDENTIFIER_CHARS``
  characters, no control character, and no first character a spreadsheet reads as a formula.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from spark_detector.chunk_aggregates import (
    AMOUNT_PLACES,
    WEIGHT_INPUT_PLACES,
    Transaction,
    WeightKey,
    quantize,
)

CHUNK_COLUMNS = (
    "step", "customer", "age", "gender", "zipcodeOri",
    "merchant", "zipMerchant", "category", "amount", "fraud",
)  # fmt: skip
WEIGHT_COLUMNS = ("Source", "Target", "Weight", "typeTrans", "fraud")

FIELD_WHITESPACE = " \t"
# decimal(18,2): 16 digits before the point. Amounts are stored in that type by the engine.
AMOUNT_INTEGER_DIGITS = 16
# decimal(22,10) holds a key weight: 12 digits before the point.
WEIGHT_INTEGER_DIGITS = 12

# Whole-value patterns: Python matches them with fullmatch, Spark's rlike gets them anchored
# (see batch_query.java_fullmatch). Every pattern here is one text for both regex engines;
# the SQL quotes it as a raw literal (R'...'), so its backslashes reach Java as written.
DECIMAL_PATTERN = r"[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)"
NON_FINITE_PATTERN = r"(?i)[+-]?(inf|infinity|nan|snan)"
_DECIMAL = re.compile(DECIMAL_PATTERN)
_NON_FINITE = re.compile(NON_FINITE_PATTERN)

# Identifiers. A fixed part of the input rules, not a setting: a limit that differed between
# two workers, or between a live run and its replay, would judge the same row differently.
# 64 characters hold any real account or merchant id (UUIDs, IBANs) and keep pair_state's
# btree key (merchant, customer) far below PostgreSQL's ~2,700-byte limit (4 bytes a
# character at most in UTF-8), so no value of a good row can fail an insert.
MAX_IDENTIFIER_CHARS = 64
# Unicode's control characters (category Cc): C0, DEL and C1. A search pattern (re.search;
# Spark's rlike searches too).
CONTROL_PATTERN = r"[\x00-\x1f\x7f-\x9f]"
# A cell starting with one of these is read as a formula by spreadsheets (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@")
_CONTROL = re.compile(CONTROL_PATTERN)


class InputRejected(ValueError):
    """An input object that cannot be read at all; ``reason`` says why, for people."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class ChunkRejected(InputRejected):
    """A chunk rejected whole: empty, not UTF-8, not CSV or a bad header."""


class ReferenceRejected(InputRejected):
    """The CustomerImportance object cannot be used at all: too large, not readable (access
    denied), empty, not UTF-8, not CSV or a header without the required columns. The one error
    for all of them: the worker and ``replay`` stop at start-up with it (exit code 2)."""


@dataclass(frozen=True)
class RejectedRow:
    row: int  # 1-based data row number (the header is row 0)
    reason: str
    line: str  # the raw line, without its line ending


@dataclass(frozen=True)
class ChunkLayout:
    """Where the columns the pipeline reads are, by 0-based position, in one chunk's rows."""

    n_columns: int
    customer: int
    merchant: int
    category: int
    gender: int
    amount: int


@dataclass(frozen=True)
class PreparedChunk:
    """A chunk that passed the whole-chunk checks: its layout and its data lines, unparsed.

    ``body`` is the text after the header line with LF line endings and without the final
    line ending; ``None`` when the chunk has no data line. ``n_lines`` counts the data lines.
    """

    key: str
    layout: ChunkLayout
    body: str | None
    n_lines: int


@dataclass(frozen=True)
class ParsedChunk:
    key: str
    transactions: tuple[Transaction, ...]
    rejected: tuple[RejectedRow, ...]


@dataclass(frozen=True)
class ParsedWeights:
    """CustomerImportance rows as ((customer, merchant, category), weight), and the bad rows."""

    rows: tuple[tuple[WeightKey, Decimal], ...]
    rejected: tuple[RejectedRow, ...]


def clean_field(value: str) -> str:
    """Strip surrounding spaces and tabs, then one pair of single quotes."""
    value = value.strip(FIELD_WHITESPACE)
    if len(value) >= 2 and value[0] == "'" and value[-1] == "'":
        return value[1:-1]
    return value


def decode_text(key: str, data: bytes, error: type[InputRejected] = ChunkRejected) -> str:
    """The object's text with LF line endings; rejects what is empty, not UTF-8 or binary."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(key, f"not UTF-8: invalid byte at offset {exc.start}") from exc
    if not text.strip():
        raise error(key, "empty: no header line")
    if "\x00" in text:
        raise error(key, "not CSV: contains NUL characters")
    return text.replace("\r\n", "\n")


def _split_header(text: str) -> tuple[list[str], str | None, int]:
    """(cleaned header names, body, number of data lines) of LF-normalised text."""
    if text.endswith("\n"):
        text = text[:-1]  # the final line ending, so that a last empty line is not a row
    header, newline, body = text.partition("\n")
    names = [clean_field(name) for name in header.split(",")]
    if not newline:
        return names, None, 0
    return names, body, body.count("\n") + 1


def _locate(key: str, names: list[str], wanted: tuple[str, ...],
            error: type[InputRejected]) -> dict[str, int]:
    missing = [name for name in wanted if name not in names]
    if missing:
        raise error(key, "header lacks required columns: " + ", ".join(missing))
    duplicated = [name for name in wanted if names.count(name) > 1]
    if duplicated:
        raise error(key, "header repeats columns: " + ", ".join(duplicated))
    return {name: names.index(name) for name in wanted}


def prepare_chunk(key: str, data: bytes) -> PreparedChunk:
    """The whole-chunk checks ("Bad input"); raises ``ChunkRejected`` with the reason."""
    names, body, n_lines = _split_header(decode_text(key, data))
    at = _locate(key, names, CHUNK_COLUMNS, ChunkRejected)
    layout = ChunkLayout(
        n_columns=len(names),
        customer=at["customer"],
        merchant=at["merchant"],
        category=at["category"],
        gender=at["gender"],
        amount=at["amount"],
    )
    return PreparedChunk(key, layout, body, n_lines)


def identifier_problem(name: str, value: str) -> str | None:
    """Why ``value`` (a cleaned field called ``name``) cannot be kept as an identifier, or None:
    longer than ``MAX_IDENTIFIER_CHARS``, a control character, or a formula's first character.
    An empty value is none of these (whether it may be empty is the caller's rule)."""
    if len(value) > MAX_IDENTIFIER_CHARS:
        return f"{name} is longer than {MAX_IDENTIFIER_CHARS} characters ({len(value)})"
    if _CONTROL.search(value):
        return f"{name} contains a control character"
    if value.startswith(FORMULA_STARTS):
        return f"{name} starts with '{value[0]}', which a spreadsheet reads as a formula"
    return None


def parse_decimal(text: str, what: str, integer_digits: int) -> Decimal | str:
    """A finite, non-negative plain decimal as ``Decimal``, or the reason it is not one."""
    if not text:
        return f"empty {what}"
    if not _DECIMAL.fullmatch(text):
        if _NON_FINITE.fullmatch(text):
            return f"{what} '{text}' is not a finite number"
        return f"{what} '{text}' is not a decimal number"
    value = Decimal(text)
    if value < 0:
        return f"{what} {text} is negative"
    return value if value.adjusted() < integer_digits else f"{what} {text} is too large"


def parse_amount(text: str) -> Decimal | str:
    """An amount rounded half-up to cents, or the reason it is rejected."""
    value = parse_decimal(text, "amount", AMOUNT_INTEGER_DIGITS)
    if isinstance(value, str):
        return value.replace("is too large", "is too large for decimal(18,2)")
    value = quantize(abs(value), AMOUNT_PLACES)  # abs: "-0.00" is zero, not negative zero
    if value.adjusted() >= AMOUNT_INTEGER_DIGITS:  # 9999999999999999.995 rounds up past the type
        return f"amount {text} is too large for decimal(18,2)"
    return value


def parse_weight(text: str) -> Decimal | str:
    """A CustomerImportance Weight rounded half-up to 6 places, or the reason it is left out.
    The rounded value must still fit decimal(22,10), the type key weights are kept in."""
    value = parse_decimal(text, "Weight", WEIGHT_INTEGER_DIGITS)
    if isinstance(value, str):
        return value.replace("is too large", "is too large for decimal(22,10)")
    value = quantize(value, WEIGHT_INPUT_PLACES)
    if value.adjusted() >= WEIGHT_INTEGER_DIGITS:  # 999999999999.9999995 rounds up past it
        return f"Weight {text} is too large for decimal(22,10)"
    return value


def parse_row(layout: ChunkLayout, row: int, line: str) -> Transaction | RejectedRow:
    """One data line of a chunk: a valid transaction or the first reason it is rejected."""
    if not line:
        return RejectedRow(row, "empty line", line)
    fields = line.split(",")
    if len(fields) != layout.n_columns:
        return RejectedRow(row, f"expected {layout.n_columns} fields, got {len(fields)}", line)
    customer = clean_field(fields[layout.customer])
    if not customer:
        return RejectedRow(row, "empty customer", line)
    merchant = clean_field(fields[layout.merchant])
    if not merchant:
        return RejectedRow(row, "empty merchant", line)
    category = clean_field(fields[layout.category])
    gender = clean_field(fields[layout.gender])
    for name, value in (("customer", customer), ("merchant", merchant),
                        ("category", category), ("gender", gender)):
        problem = identifier_problem(name, value)
        if problem is not None:
            return RejectedRow(row, problem, line)
    amount = parse_amount(clean_field(fields[layout.amount]))
    if isinstance(amount, str):
        return RejectedRow(row, amount, line)
    return Transaction(row=row, customer=customer, merchant=merchant, category=category,
                       gender=gender, amount=amount)


def data_lines(prepared: PreparedChunk) -> Iterator[tuple[int, str]]:
    """(row number, line) of every data line; row 1 is the line after the header."""
    if prepared.body is None:
        return
    yield from enumerate(prepared.body.split("\n"), start=1)


def parse_chunk(key: str, data: bytes) -> ParsedChunk:
    """A chunk's valid transactions and rejected rows; raises ``ChunkRejected`` if it is bad."""
    prepared = prepare_chunk(key, data)
    transactions: list[Transaction] = []
    rejected: list[RejectedRow] = []
    for row, line in data_lines(prepared):
        parsed = parse_row(prepared.layout, row, line)
        if isinstance(parsed, Transaction):
            transactions.append(parsed)
        else:
            rejected.append(parsed)
    return ParsedChunk(key, tuple(transactions), tuple(rejected))


def parse_customer_importance(
    data: bytes, key: str = "reference/CustomerImportance.csv"
) -> ParsedWeights:
    """CustomerImportance rows for ``key_weights``; bad rows are returned, not fatal.

    Raises ``ReferenceRejected`` when the object as a whole is unreadable (empty, not UTF-8,
    header without Source, Target, Weight, typeTrans and fraud).
    """
    rows: list[tuple[WeightKey, Decimal]] = []
    rejected: list[RejectedRow] = []
    for item in iter_customer_importance(data, key):
        if isinstance(item, RejectedRow):
            rejected.append(item)
        else:
            rows.append(item)
    return ParsedWeights(tuple(rows), tuple(rejected))


def iter_customer_importance(
    data: bytes, key: str = "reference/CustomerImportance.csv"
) -> Iterator[tuple[WeightKey, Decimal] | RejectedRow]:
    """``parse_customer_importance``'s rows and rejects one at a time, in file order.

    For a consumer that keeps only what it derives (the key weights): the parsed rows of the
    full file take ~0.3 GB as Python objects, its ~42,000 key weights a few MB. The whole
    object is checked (decoded, header located) before the first row is yielded.
    """
    names, body, _ = _split_header(decode_text(key, data, ReferenceRejected))
    at = _locate(key, names, WEIGHT_COLUMNS, ReferenceRejected)
    return _weight_rows(names, at, body)


def _weight_rows(names: list[str], at: dict[str, int], body: str | None
                 ) -> Iterator[tuple[WeightKey, Decimal] | RejectedRow]:
    for row, line in enumerate(body.split("\n") if body is not None else (), start=1):
        fields = line.split(",")
        if len(fields) != len(names):
            yield RejectedRow(row, f"expected {len(names)} fields, got {len(fields)}", line)
            continue
        customer, merchant, category = (
            clean_field(fields[at[name]]) for name in ("Source", "Target", "typeTrans")
        )
        if not customer or not merchant:
            yield RejectedRow(row, "empty Source" if not customer else "empty Target", line)
            continue
        problem = next(filter(None, (
            identifier_problem(name, value) for name, value in
            (("Source", customer), ("Target", merchant), ("typeTrans", category)))), None)
        if problem is not None:
            yield RejectedRow(row, problem, line)
            continue
        weight = parse_weight(clean_field(fields[at["Weight"]]))
        if isinstance(weight, str):
            yield RejectedRow(row, weight, line)
            continue
        yield (customer, merchant, category), weight


def size_rejection(size: int, max_bytes: int) -> str | None:
    """Why a chunk is rejected whole before anything reads it, from its size alone."""
    if size == 0:
        return "empty chunk (0 bytes)"
    if size > max_bytes:
        return f"too large: {size:,} bytes, the limit is {max_bytes:,}"
    return None
