"""Chunking: the pure middle of the streamer (chunk names: ``chunk_contract.layout``).

A chunk is the header line plus up to ``rows_per_chunk`` data lines of the master file, bytes
passed through unchanged (a malformed row is the detector's business: docs/detection-semantics.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

REQUIRED_COLUMNS = (
    "step", "customer", "age", "gender", "zipcodeOri",
    "merchant", "zipMerchant", "category", "amount", "fraud",
)
IMPORTANCE_COLUMNS = ("Source", "Target", "Weight", "typeTrans")
UTF8_BOM = b"\xef\xbb\xbf"


class BadHeader(ValueError):
    """The first line is not a header with the required columns."""


@dataclass(frozen=True)
class Chunk:
    seq: int  # 1-based sequence number, also in the key
    first_row: int  # 0-based index of the first data row in the source
    rows: int
    body: bytes  # header + rows, ready to upload


def header_columns(line: bytes) -> list[str]:
    """Column names of a header line (BOM, whitespace, one pair of quotes stripped)."""
    text = line.removeprefix(UTF8_BOM).decode("utf-8").strip()
    return [name.strip().removeprefix("'").removesuffix("'") for name in text.split(",")]


def check_header(line: bytes, required: Iterable[str] = REQUIRED_COLUMNS) -> bytes:
    """The header line to repeat in every chunk; ``BadHeader`` if a required column is missing."""
    try:
        columns = header_columns(line)
    except UnicodeDecodeError as exc:
        raise BadHeader("header is not UTF-8 text") from exc
    missing = [name for name in required if name not in columns]
    if missing:
        raise BadHeader(f"header lacks required column(s) {', '.join(missing)}")
    header = line.removeprefix(UTF8_BOM)
    return header if header.endswith(b"\n") else header + b"\n"


def iter_chunks(
    header: bytes, lines: Iterable[bytes], rows_per_chunk: int, first_seq: int, first_row: int
) -> Iterator[Chunk]:
    """Group data lines into chunks. Blank lines are not rows and are skipped."""
    batch: list[bytes] = []
    seq, start = first_seq, first_row
    for line in lines:
        if not line.strip(b"\r\n"):
            continue
        batch.append(line if line.endswith(b"\n") else line + b"\n")
        if len(batch) == rows_per_chunk:
            yield Chunk(seq, start, len(batch), header + b"".join(batch))
            seq, start, batch = seq + 1, start + len(batch), []
    if batch:
        yield Chunk(seq, start, len(batch), header + b"".join(batch))


def skip_rows(lines: Iterator[bytes], count: int) -> int:
    """Consume ``count`` data rows (blank lines do not count); returns how many were there."""
    skipped = 0
    while skipped < count:
        line = next(lines, None)
        if line is None:
            break
        if line.strip(b"\r\n"):
            skipped += 1
    return skipped
