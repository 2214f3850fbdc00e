"""Where chunks, the reference file and the resume state go: S3, or a local folder (--dry-run).

Both stores lay objects out by key the same way, so a dry run's folder looks like the bucket.
Both write the state object conditionally (``put_if``): the producer's lease on the stream
(``producer.lease``) rests on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import ClientError


class StoreError(Exception):
    """Writing to or reading from the object store failed (after the client's own retries)."""


class WriteConflict(Exception):
    """A conditional write found the object changed (or created, or gone) by another writer."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    etag: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


class ObjectStore(Protocol):
    location: str

    def put(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> str: ...
    def upload_file(self, key: str, path: Path, metadata: dict[str, str]) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def get_versioned(self, key: str) -> tuple[bytes, str] | None: ...
    def put_if(self, key: str, body: bytes, etag: str | None) -> str: ...
    def head(self, key: str) -> StoredObject | None: ...
    def keys(self, prefix: str) -> list[str]: ...


class S3Store:
    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket
        self.location = f"s3://{bucket}/"

    def put(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> str:
        try:
            response = self._s3.put_object(
                Bucket=self.bucket, Key=key, Body=body, Metadata=metadata or {}
            )
        except ClientError as exc:
            raise StoreError(f"cannot write s3://{self.bucket}/{key}: {exc}") from exc
        return response.get("ETag", "").strip('"')

    def upload_file(self, key: str, path: Path, metadata: dict[str, str]) -> None:
        try:
            self._s3.upload_file(str(path), self.bucket, key, ExtraArgs={"Metadata": metadata})
        except (ClientError, OSError) as exc:
            raise StoreError(f"cannot upload {path} to s3://{self.bucket}/{key}: {exc}") from exc

    def get(self, key: str) -> bytes | None:
        found = self.get_versioned(key)
        return None if found is None else found[0]

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None when there is none."""
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response.get("ETag", "").strip('"')
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise StoreError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc

    def put_if(self, key: str, body: bytes, etag: str | None) -> str:
        """Write ``key`` only if it is still version ``etag`` (None: only if there is none);
        its new ETag. ``WriteConflict`` when another writer got there first: S3 answers 412
        to a failed condition, 409 to a concurrent conditional write, 404 to If-Match on an
        object deleted meanwhile."""
        condition = {"IfMatch": f'"{etag}"'} if etag else {"IfNoneMatch": "*"}
        try:
            response = self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, **condition)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"}:
                raise WriteConflict(f"s3://{self.bucket}/{key} changed: {code}") from exc
            raise StoreError(f"cannot write s3://{self.bucket}/{key}: {exc}") from exc
        return response.get("ETag", "").strip('"')

    def head(self, key: str) -> StoredObject | None:
        try:
            response = self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise StoreError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc
        return StoredObject(
            key=key,
            size=int(response.get("ContentLength", 0)),
            etag=response.get("ETag", "").strip('"'),
            metadata=dict(response.get("Metadata", {})),
        )

    def keys(self, prefix: str) -> list[str]:
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            return [item["Key"] for page in pages for item in page.get("Contents", [])]
        except ClientError as exc:
            raise StoreError(f"cannot list s3://{self.bucket}/{prefix}: {exc}") from exc


class LocalStore:
    """A folder laid out like the bucket; metadata lives in ``.metadata/<key>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = f"{root}/"

    def _path(self, key: str) -> Path:
        return self.root / key

    def _meta_path(self, key: str) -> Path:
        return self.root / ".metadata" / f"{key}.json"

    def _write_atomically(self, path: Path, body: bytes) -> None:
        # Write then rename, so a reader never sees half a chunk.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put(self, key: str, body: bytes, metadata: dict[str, str] | None = None) -> str:
        try:
            self._write_atomically(self._meta_path(key), json.dumps(metadata or {}).encode())
            self._write_atomically(self._path(key), body)
        except OSError as exc:
            raise StoreError(f"cannot write {self._path(key)}: {exc}") from exc
        return ""

    def upload_file(self, key: str, path: Path, metadata: dict[str, str]) -> None:
        try:
            self.put(key, path.read_bytes(), metadata)
        except OSError as exc:
            raise StoreError(f"cannot copy {path} to {self._path(key)}: {exc}") from exc

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The file's bytes and their MD5 (what S3 gives as the ETag of a single put)."""
        body = self.get(key)
        return None if body is None else (body, _md5(body))

    def put_if(self, key: str, body: bytes, etag: str | None) -> str:
        """``S3Store.put_if`` on the folder: the check and the write under one file lock."""
        with self._locked():
            found = self.get_versioned(key)
            if (found[1] if found else None) != etag:
                raise WriteConflict(f"{self._path(key)} changed")
            try:
                self._write_atomically(self._path(key), body)
            except OSError as exc:
                raise StoreError(f"cannot write {self._path(key)}: {exc}") from exc
        return _md5(body)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.root / ".metadata" / ".lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        if not path.is_file():
            return None
        meta_path = self._meta_path(key)
        metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        return StoredObject(key=key, size=path.stat().st_size, metadata=metadata)

    def keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        folder = base if prefix.endswith("/") else base.parent
        if not folder.is_dir():
            return []
        found = (p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
        return sorted(k for k in found if k.startswith(prefix) and "/.tmp-" not in k)


def _md5(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()
