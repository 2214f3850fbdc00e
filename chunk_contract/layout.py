"""The data bucket's layout: the default prefixes and keys, and the chunk key format.

Every component reads the same environment variables (``CHUNK_PREFIX``, ``REFERENCE_KEY``,
...) with these defaults, and template.yaml's parameters default to the same values.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

CHUNK_PREFIX = "stream_chunks/"  # chunk files; the only keys that trigger the pipeline
CHUNK_SUFFIX = ".csv"
REFERENCE_KEY = "reference/CustomerImportance.csv"
DETECTIONS_PREFIX = "detected_patterns/"
QUARANTINE_PREFIX = "quarantine/"
STATE_PREFIX = "_state/"  # the producer's resume position

MAX_CHUNK_SEQ = 99_999_999  # eight digits keep the names sorting in production order

_CHUNK_NAME = re.compile(r"chunk-(?P<seq>\d{8})-(?P<ts>\d{8}T\d{6}\.\d{3}Z)\.csv$")


def chunk_key(prefix: str, seq: int, when: datetime) -> str:
    """``<prefix>chunk-<seq:08d>-<yyyymmddTHHMMSS.fffZ>.csv``; names sort in production order."""
    if seq < 1 or seq > MAX_CHUNK_SEQ:
        raise ValueError(f"chunk sequence number out of range: {seq}")
    utc = when.astimezone(UTC)
    stamp = utc.strftime("%Y%m%dT%H%M%S.") + f"{utc.microsecond // 1000:03d}Z"
    return f"{prefix}chunk-{seq:08d}-{stamp}.csv"


def chunk_seq(key: str) -> int | None:
    """The producer's sequence number in a chunk key, or ``None`` for another name."""
    match = _CHUNK_NAME.search(key)
    return int(match["seq"]) if match else None
