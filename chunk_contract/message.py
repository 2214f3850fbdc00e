"""The chunk message: the one contract between the trigger (and backfill) and the worker.

It crosses a process boundary, so it carries a version. The worker accepts versions it
knows and rejects anything else as a poison message.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

MESSAGE_VERSION = 1


class InvalidChunkMessage(ValueError):
    """A message body that is not a chunk message this code understands."""


@dataclass(frozen=True)
class ChunkMessage:
    bucket: str
    key: str
    size: int
    etag: str = ""
    sequencer: str = ""
    event_time: str = ""  # ISO-8601 UTC of the S3 event ("" when enqueued by backfill)
    version: int = MESSAGE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, body: str) -> ChunkMessage:
        try:
            data = json.loads(body)
        except (TypeError, json.JSONDecodeError) as exc:
            raise InvalidChunkMessage(f"body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidChunkMessage("body is not a JSON object")
        if data.get("version") != MESSAGE_VERSION:
            raise InvalidChunkMessage(f"unsupported message version {data.get('version')!r}")
        try:
            message = cls(
                bucket=str(data["bucket"]),
                key=str(data["key"]),
                size=int(data["size"]),
                etag=str(data.get("etag", "")),
                sequencer=str(data.get("sequencer", "")),
                event_time=str(data.get("event_time", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidChunkMessage(f"missing or bad field: {exc}") from exc
        if not message.bucket or not message.key:
            raise InvalidChunkMessage("bucket and key must not be empty")
        return message
