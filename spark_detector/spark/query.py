"""The query of one micro-batch, as SQL in named steps: fetched chunks in, aggregates out.

1. each chunk's data lines are exploded, split and validated with Spark expressions (no
   Python UDF): the row rules mirror ``parsing.parse_row`` reason for reason;
2. one ``GROUP BY`` (a hash aggregate) yields, per chunk, the aggregates per (merchant,
   customer, category), each rejected row with its reason, and a marker row for chunks
   without data lines or rejected whole.

The key weights are not joined here: the result is grouped by category too, so each row has
ONE weight key, (customer, merchant, category), and the driver multiplies its count by that
key's weight (``batch_result.assemble_batch``). A broadcast join of the ~50,000 weights cost
~300 ms per job plus ~8 ms per chunk (measured, 10-chunk batches: 1.42 s with the join,
0.60 s without): more than the rest of a one-chunk job. Grouping by category adds no rows on
the real data, where every merchant has one category.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from spark_detector.parsing import (
    CONTROL_PATTERN,
    DECIMAL_PATTERN,
    FIELD_WHITESPACE,
    FORMULA_STARTS,
    MAX_IDENTIFIER_CHARS,
    NON_FINITE_PATTERN,
)

# The kinds of output row
PAIR, REJECTED_ROW, CHUNK = "pair", "rejected_row", "chunk"


def java_fullmatch(pattern: str) -> str:
    r"""A ``re.fullmatch`` pattern for Spark's rlike (Java regex, which searches).

    UNIX_LINES (``d``): only "\n" ends a line, which no field contains, so ``$`` is the end
    of the value; by default Java's ``$`` also matches before a final "\r" or "\u2028".
    """
    flags = "(?di)" if pattern.startswith("(?i)") else "(?d)"
    return f"{flags}^(?:{pattern.removeprefix('(?i)')})$"


def _clean_sql(column: str) -> str:
    """SQL of ``parsing.clean_field`` for an already trimmed column: one pair of quotes off."""
    return (
        f"CASE WHEN length({column}) >= 2 AND startswith({column}, \"'\") "
        f"AND endswith({column}, \"'\") "
        f"THEN substr({column}, 2, length({column}) - 2) ELSE {column} END"
    )


_FIELDS = ("customer", "merchant", "category", "gender", "amount")
_TRIM = "'" + FIELD_WHITESPACE.replace("\t", "\\t") + "'"  # as a SQL literal: ' \t'

# Rounds half-up, as parsing.parse_amount does; null when the value overflows the type.
_AMOUNT_SQL = "try_cast(amount_text AS DECIMAL(18,2))"
_FORMULA_STARTS_SQL = ", ".join(f"'{c}'" for c in FORMULA_STARTS)


def _identifier_reason_sql(name: str) -> str:
    """The WHEN clauses of ``parsing.identifier_problem`` for column ``name``, same order and
    reasons. ``has_control``, one search per line, spares the four fields' own searches on
    the lines without any control character (nearly all of them). R'' (a raw literal) hands
    the pattern's backslashes to Java's regex as they are."""
    return f"""
  WHEN length({name}) > {MAX_IDENTIFIER_CHARS} THEN
    format_string('{name} is longer than {MAX_IDENTIFIER_CHARS} characters (%d)', length({name}))
  WHEN has_control AND {name} RLIKE R'{CONTROL_PATTERN}' THEN '{name} contains a control character'
  WHEN left({name}, 1) IN ({_FORMULA_STARTS_SQL}) THEN
    concat("{name} starts with '", left({name}, 1), "', which a spreadsheet reads as a formula")"""


_IDENTIFIER_REASONS_SQL = "".join(
    _identifier_reason_sql(name) for name in ("customer", "merchant", "category", "gender"))

# The row rules of parsing.parse_row, in the same order, with the same reasons.
_ROW_REASON_SQL = f"""
CASE
  WHEN line IS NULL THEN NULL
  WHEN line = '' THEN 'empty line'
  WHEN n_fields != n_columns THEN format_string('expected %d fields, got %d', n_columns, n_fields)
  WHEN customer = '' THEN 'empty customer'
  WHEN merchant = '' THEN 'empty merchant'{_IDENTIFIER_REASONS_SQL}
  WHEN amount_text = '' THEN 'empty amount'
  WHEN NOT amount_text RLIKE R'{java_fullmatch(DECIMAL_PATTERN)}' THEN
    CASE WHEN amount_text RLIKE R'{java_fullmatch(NON_FINITE_PATTERN)}'
      THEN concat("amount '", amount_text, "' is not a finite number")
      ELSE concat("amount '", amount_text, "' is not a decimal number") END
  -- a minus sign before a non-zero digit: "-0.00" is zero, "-0.001" is negative
  WHEN amount_text RLIKE '^-[0-9.]*[1-9]' THEN concat('amount ', amount_text, ' is negative')
  WHEN {_AMOUNT_SQL} IS NULL THEN concat('amount ', amount_text, ' is too large for decimal(18,2)')
END"""

_CHUNK = "chunk_key, status, chunk_reason, n_lines"
_INDEXES = ", ".join(f"i_{name}" for name in _FIELDS)
_TRIMMED = ", ".join(
    f"btrim(try_element_at(fields, i_{name} + 1), {_TRIM}) AS {name}_t" for name in _FIELDS
)
_CLEANED = ", ".join(
    f"{_clean_sql(name + '_t')} AS {'amount_text' if name == 'amount' else name}"
    for name in _FIELDS
)

# Only valid rows have a pair and a weight key; a rejected row is keyed by its number and
# keeps its line (a pair aggregating every line's text would be wasted work).
_VALID = "line IS NOT NULL AND reason IS NULL"

# The query of one micro-batch as named steps, each a SELECT from the one before. It is SQL
# rather than Column objects because building the same plan from Columns costs ~2,000 py4j
# round trips (~200 ms per batch on the driver before Spark starts); one spark.sql call costs
# a handful.
_STEPS = (
    ("lines", f"""
  SELECT {_CHUNK}, n_columns, {_INDEXES},
         posexplode_outer(split(body, '\\n', -1)) AS (pos, line)"""),
    ("split", f"""
  SELECT {_CHUNK}, n_columns, {_INDEXES}, pos + 1 AS row, line, split(line, ',', -1) AS fields,
         line RLIKE R'{CONTROL_PATTERN}' AS has_control"""),
    ("trimmed", f"""
  SELECT {_CHUNK}, n_columns, row, line, has_control, size(fields) AS n_fields, {_TRIMMED}"""),
    ("cleaned", f"""
  SELECT {_CHUNK}, n_columns, row, line, has_control, n_fields, {_CLEANED}"""),
    # one row per data line, or one marker row (line NULL) per chunk without data lines
    ("parsed", f"""
  SELECT {_CHUNK}, row, line, {_ROW_REASON_SQL} AS reason,
         customer, merchant, category, gender, {_AMOUNT_SQL} AS amount"""),
    ("keyed", f"""
  SELECT {_CHUNK}, row, reason, amount,
         CASE WHEN line IS NULL THEN '{CHUNK}'
              WHEN reason IS NOT NULL THEN '{REJECTED_ROW}'
              ELSE '{PAIR}' END AS kind,
         IF({_VALID}, customer, NULL) AS customer,
         IF({_VALID}, merchant, NULL) AS merchant,
         IF({_VALID}, category, NULL) AS category,
         IF({_VALID}, gender, NULL) AS gender,
         IF(reason IS NOT NULL, row, NULL) AS reject_row,
         IF(reason IS NOT NULL, line, NULL) AS line"""),
)

# Only numeric aggregation buffers, so that Spark can use a hash aggregate: a string buffer
# (min_by(gender, row), max(line)) forces a sort-based one, ~2x slower here. Values constant
# within a group are grouping keys instead; a pair is grouped by category and gender too, and
# assemble_batch merges the (rare) pairs whose rows carry several.
_AGGREGATE = """
SELECT chunk_key, kind, status, chunk_reason, n_lines, merchant, customer, category, gender,
       count(1) AS txn_count, sum(amount) AS amount_sum,
       min(row) AS first_row, reject_row, reason, line
FROM {source}
GROUP BY chunk_key, kind, status, chunk_reason, n_lines,
         merchant, customer, category, gender, reject_row, reason, line
"""


def _nested(steps: tuple[tuple[str, str], ...], outer: str) -> str:
    """``outer`` over the steps, each a subquery of the next: what a WITH clause of the same
    steps would say, with less for Spark to analyse. Measured, one-chunk jobs, 120 of each
    interleaved in one process: 191 ms (median) with a WITH clause and a separate step for
    ``kind``; 169 ms so. Spark's CTE rules (substitution, then inlining) were most of it."""
    source = "{fetched}"
    for name, select in steps:
        source = f"({select}\n  FROM {source}\n) AS {name}"
    return outer.replace("{source}", source)


_BATCH_SQL = _nested(_STEPS, _AGGREGATE)

OUTPUT_COLUMNS = (
    "chunk_key", "kind", "status", "chunk_reason", "n_lines",
    "merchant", "customer", "category", "gender", "txn_count", "amount_sum",
    "first_row", "reject_row", "reason", "line",
)  # fmt: skip


def aggregate_chunks(spark: SparkSession, fetched: DataFrame) -> DataFrame:
    """Fetched chunks -> per chunk: a row per (merchant, customer, category, gender), per
    rejected row, and a marker.

    Lines are parsed and checked by the rules of ``parsing.parse_row``, with its reasons.
    Rejected rows and markers go through the same ``GROUP BY`` as the pairs (each rejected
    row is its own group) so that the whole batch is one query with one shuffle: a second
    query for the rejects would fetch and parse every chunk again. Columns: ``OUTPUT_COLUMNS``.
    """
    return spark.sql(_BATCH_SQL, fetched=fetched)
