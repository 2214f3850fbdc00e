"""The data bucket's layout: the default prefixes and keys, and the chunk key format.

Every component reads the same environment variables (``CHUNK_PREFIX``, ``REFERENCE_KEY``,
...) with these defaults, and template.yaml's parameters default to the same values.

The producer names its chunks ``<prefix>chunk-<seq:08d>-<yyyymmddTHHMMSS.fffZ>.csv``. Only a
key of exactly that format, directly under the chunk prefix, with ASCII digits and a
sequence number of at least 1, carries a number (``chunk_seq``); any other key under the
prefix is a hand upload, applied in arrival order (docs/detection-semantics.md).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

CHUNK_PREFIX = "stream_chunks/"  # chunk files; the only keys that trigger the pipeline
CHUNK_SUFFIX = ".csv"
REFERENCE_KEY = "reference/CustomerImportance.csv"
DETECTIONS_PREFIX = "detected_patterns/"
QUARANTINE_PREFIX = "quarantine/"
STATE_PREFIX = "_state/"  # the producer's resume position and its lease

MAX_CHUNK_SEQ = 99_999_999  # eight digits keep the names sorting in production order

_STAMP = "%Y%m%dT%H%M%S.%fZ"
# [0-9], not \d: a digit of another script is no sequence number
_CHUNK_NAME = re.compile(r"chunk-(?P<seq>[0-9]{8})-(?P<ts>[0-9]{8}T[0-9]{6}\.[0-9]{3}Z)\.csv")


def chunk_key(prefix: str, seq: int, when: datetime) -> str:
    """``<prefix>chunk-<seq:08d>-<yyyymmddTHHMMSS.fffZ>.csv``; names sort in production order."""
    if seq < 1 or seq > MAX_CHUNK_SEQ:
        raise ValueError(f"chunk sequence number out of range: {seq}")
    utc = when.astimezone(UTC)
    stamp = utc.strftime("%Y%m%dT%H%M%S.") + f"{utc.microsecond // 1000:03d}Z"
    return f"{prefix}{seq_key_prefix(seq)}{stamp}.csv"


def chunk_seq(key: str, prefix: str) -> int | None:
    """The producer's sequence number in ``key``, or ``None`` for any key that is not exactly
    ``chunk_key(prefix, seq, when)`` for some ``seq >= 1`` and a real time."""
    if not key.startswith(prefix):
        return None
    match = _CHUNK_NAME.fullmatch(key, len(prefix))
    if match is None:
        return None
    try:
        datetime.strptime(match["ts"], _STAMP)
    except ValueError:  # 20261399T..., say
        return None
    seq = int(match["seq"])
    return seq if seq >= 1 else None


def seq_key_prefix(seq: int) -> str:
    """What every key of chunk ``seq`` starts with after the chunk prefix: ``chunk-<seq:08d>-``
    (list ``<prefix>`` + this to find the chunk of one number)."""
    return f"chunk-{seq:08d}-"


def start_after_seq(prefix: str, seq: int) -> str:
    """An S3 ``StartAfter`` whose listing begins with chunk ``seq``: every key of a smaller
    number sorts before it (keys sort by number), every later one after it."""
    return f"{prefix}{seq_key_prefix(seq - 1)}~" if seq > 1 else f"{prefix}chunk-"
