"""A chunk's pairs as the text that PostgreSQL's COPY reads into ``chunk_pairs``
(``engine.state``): one line per (merchant, customer) pair, ``COPY_COLUMNS`` separated by
tabs, in COPY's text format.

Two writers of the one format:

- ``pairs_copy_text``, from ``PairAggregate`` tuples: the reference path (tests, and
  ``apply_chunk`` called with plain ``ChunkAggregates``);
- ``batch_result.arrow_copy_lines``, from Arrow columns: the worker's path. A micro-batch's
  ~126,000 pairs never become Python objects: Arrow's compute kernels (C++) format them;
  with the weighing and merging, 415 -> 76 ms for 10 chunks (docs/performance.md).

Both write a number as its decimal text (an unweighted pair's weight sum may be ``0`` or
``0E-10``): PostgreSQL reads either as the same value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from spark_detector.chunk_aggregates import PairAggregate

COPY_COLUMNS = ("merchant", "customer", "txn_count", "amount_sum", "weight_sum",
                "weighted_count", "first_gender")

# COPY's text format: only the backslash and the separators need escaping (backslash first)
ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))
_ESCAPE_TABLE = str.maketrans(dict(ESCAPES))


def _escaped(value: str) -> str:
    return value.translate(_ESCAPE_TABLE)


@dataclass(frozen=True)
class PreparedPairs:
    """A chunk's pairs written out as COPY text, ahead of its transaction: the worker builds
    it on its Spark thread, so that its main thread only waits on PostgreSQL. It holds no
    pair objects: a held chunk costs its text (~0.5 MB), not ~6,300 tuples (~3 MB)."""

    chunk_key: str
    pairs: int
    copy_text: str


def pairs_copy_text(pairs: Iterable[PairAggregate]) -> str:
    """The COPY text of ``pairs``, built in Python."""
    return "".join([
        f"{_escaped(p.merchant)}\t{_escaped(p.customer)}\t{p.txn_count}\t{p.amount_sum}"
        f"\t{p.weight_sum}\t{p.weighted_count}\t{_escaped(p.first_gender)}\n"
        for p in pairs
    ])
