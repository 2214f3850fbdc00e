"""The producer's resume position and its lease on the stream, one small JSON object under
``$STATE_PREFIX`` (``producer.lease``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

STATE_VERSION = 1


class BadState(ValueError):
    """The stored state object cannot be read."""


@dataclass(frozen=True)
class ProducerState:
    source_fingerprint: str
    next_row: int  # 0-based index of the next data row to send
    next_seq: int  # sequence number of the next chunk
    source: str = ""  # where it was read from last time (informational)
    updated_at: str = ""
    version: int = STATE_VERSION
    lease_owner: str = ""  # the producer writing the stream now ("": none)
    lease_expires_at: str = ""  # ISO-8601 UTC; a crashed owner's lease ends then

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, body: bytes) -> ProducerState:
        try:
            data = json.loads(body)
            if data.get("version") != STATE_VERSION:
                raise BadState(f"unsupported state version {data.get('version')!r}")
            state = cls(
                source_fingerprint=str(data["source_fingerprint"]),
                next_row=int(data["next_row"]),
                next_seq=int(data["next_seq"]),
                source=str(data.get("source", "")),
                updated_at=str(data.get("updated_at", "")),
                lease_owner=str(data.get("lease_owner", "")),
                lease_expires_at=str(data.get("lease_expires_at", "")),
            )
            if state.lease_owner:
                datetime.fromisoformat(state.lease_expires_at)  # a ValueError if it is not
            return state
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, BadState):
                raise
            raise BadState(f"state object is not valid: {exc}") from exc


def starting_position(
    saved: ProducerState | None, fingerprint: str, from_start: bool, last_seq_in_store: int
) -> tuple[int, int]:
    """(next_row, next_seq) to start from.

    Sequence numbers never go back, even on ``--from-start``: chunk names must keep sorting in
    production order and must never overwrite an earlier chunk.
    """
    first_free_seq = max(last_seq_in_store + 1, saved.next_seq if saved else 1)
    if saved is None or from_start:
        return 0, first_free_seq
    if saved.source_fingerprint != fingerprint:
        raise SourceChanged(saved)
    return saved.next_row, saved.next_seq


class SourceChanged(Exception):
    """The saved position belongs to a different source file."""

    def __init__(self, saved: ProducerState) -> None:
        super().__init__(
            f"the saved position (row {saved.next_row}) belongs to a different file"
            f" ({saved.source or 'unknown'}); use --from-start to stream this one from the top"
        )
        self.saved = saved
