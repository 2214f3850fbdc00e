"""Where the master file comes from: a local path, ``s3://bucket/key`` or ``http(s)://``.

Every source is read as a byte stream, line by line, so memory does not grow with the file.
Its fingerprint (a hash of the first MiB plus the size when known) identifies the content for
resuming, wherever the copy lives.
"""

from __future__ import annotations

import hashlib
import io
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

FINGERPRINT_BYTES = 1 << 20
READ_BUFFER = 1 << 20
HTTP_TIMEOUT_SECONDS = 60


class SourceError(Exception):
    """A source that cannot be read; the message names the source and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


_DRIVE_ID = re.compile(r"/file/d/([A-Za-z0-9_-]+)")


def google_drive_download_url(url: str) -> str:
    """The direct download URL for a Google Drive share link; other URLs are returned as is.

    ``confirm=t`` skips the "cannot scan this file for viruses" page Drive shows for large
    files instead of the content.
    """
    parts = urlsplit(url)
    if parts.hostname not in {"drive.google.com", "docs.google.com"}:
        return url
    match = _DRIVE_ID.search(parts.path)
    file_id = match.group(1) if match else next(iter(parse_qs(parts.query).get("id", [])), None)
    if not file_id:
        return url
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


class TruncatedSource(OSError):
    """The source ended before the size it announced (a cut connection, a shrinking file)."""


class _Prefixed(io.RawIOBase):
    """A raw stream that yields ``head`` and then the rest of ``rest``.

    It also checks the announced size: ``http.client`` returns a short read, not an error, when
    a connection is cut, and a cut file must not be mistaken for a complete one.
    """

    def __init__(self, head: bytes, rest: BinaryIO, expected_size: int | None) -> None:
        self._head = memoryview(head)
        self._rest = rest
        self._expected = expected_size
        self._seen = len(head)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        if not data and self._expected is not None and self._seen < self._expected:
            raise TruncatedSource(
                f"source ended after {self._seen} of {self._expected} bytes"
            )
        self._seen += len(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._rest.close()
        super().close()


@dataclass
class OpenSource:
    """An opened source: its name, fingerprint and a line iterator over its bytes."""

    name: str
    fingerprint: str
    size: int | None
    stream: BinaryIO

    def lines(self) -> Iterator[bytes]:
        return iter(self.stream)

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> OpenSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fingerprint(head: bytes, size: int | None) -> str:
    digest = hashlib.sha256(head).hexdigest()
    return f"sha256-head:{digest}:size:{size if size is not None else 'unknown'}"


def _open_raw(uri: str, s3: Any) -> tuple[BinaryIO, int | None]:
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        if not bucket or not key:
            raise SourceError(uri, "not an s3://bucket/key URI")
        if s3 is None:
            raise SourceError(uri, "no S3 client available")
        try:
            response = s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise SourceError(uri, f"cannot read S3 object ({code})") from exc
        except BotoCoreError as exc:
            raise SourceError(uri, f"cannot reach S3 ({exc})") from exc
        return response["Body"], int(response.get("ContentLength", 0)) or None
    if uri.startswith(("http://", "https://")):
        url = google_drive_download_url(uri)
        try:
            response = urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS)
        except urllib.error.HTTPError as exc:
            raise SourceError(uri, f"HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SourceError(uri, f"cannot open URL ({reason})") from exc
        if response.headers.get_content_type() == "text/html":
            response.close()
            raise SourceError(uri, "got an HTML page, not CSV (is the file shared publicly?)")
        length = response.headers.get("Content-Length")
        return response, int(length) if length and length.isdigit() else None
    path = Path(uri.removeprefix("file://"))
    try:
        handle = path.open("rb")
    except FileNotFoundError as exc:
        raise SourceError(uri, "file not found") from exc
    except OSError as exc:
        raise SourceError(uri, f"cannot open file ({exc.strerror})") from exc
    if path.is_dir():
        handle.close()
        raise SourceError(uri, "is a directory, not a file")
    return handle, path.stat().st_size


def open_source(uri: str, s3: Any = None) -> OpenSource:
    """Open ``uri`` for streaming; ``SourceError`` if it cannot be read or is empty."""
    raw, size = _open_raw(uri, s3)
    try:
        head = _read_up_to(raw, FINGERPRINT_BYTES)
    except (OSError, BotoCoreError) as exc:
        raw.close()
        raise SourceError(uri, f"read failed ({exc})") from exc
    if not head:
        raw.close()
        raise SourceError(uri, "file is empty")
    stream = io.BufferedReader(_Prefixed(head, raw, size), buffer_size=READ_BUFFER)
    return OpenSource(uri, _fingerprint(head, size), size, stream)


def _read_up_to(raw: BinaryIO, limit: int) -> bytes:
    parts, got = [], 0
    while got < limit:
        data = raw.read(limit - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)
