"""The outbox writer and the quarantine: everything the worker puts into S3.

Each put is idempotent: a detection file's name and bytes are fixed by the database, and a
quarantine object's key is derived from the chunk key, so a retry after a crash rewrites the
same object with the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Sequence

from spark_detector.engine import outbox
from spark_detector.failpoints import failpoint
from spark_detector.parsing import RejectedRow


def publish_pending(conn, s3, bucket: str, prefix: str) -> list[str]:
    """Write every closed, unwritten detection file to S3, then mark it written.

    A crash between the put and the mark rewrites the same bytes on restart: nothing is
    lost and nothing appears in two files.
    """
    written = []
    for file in outbox.pending_files(conn, prefix):
        failpoint("before_s3_write")
        s3.put_object(Bucket=bucket, Key=file.s3_key, Body=outbox.render_csv(file.detections),
                      ContentType="text/csv")
        failpoint("after_s3_write")
        outbox.mark_written(conn, file.file_no, file.s3_key)
        written.append(file.s3_key)
    return written


def quarantine_key(prefix: str, chunk_key: str, kind: str) -> str:
    """`quarantine/chunks/<name>` for a whole chunk, `quarantine/rows/<name>` for its bad rows."""
    return f"{prefix}{kind}/{posixpath.basename(chunk_key)}"


def quarantine_chunk(s3, bucket: str, prefix: str, chunk_key: str, reason: str) -> str:
    """Copy a chunk rejected whole under quarantine/, with its reason as object metadata and
    a `.reason.json` beside it (metadata is easy to miss in a console)."""
    failpoint("quarantine", chunk_key)
    key = quarantine_key(prefix, chunk_key, "chunks")
    s3.copy_object(
        Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": chunk_key},
        Metadata={"reason": reason.encode("ascii", "replace").decode()[:1024]},
        MetadataDirective="REPLACE",
    )
    s3.put_object(
        Bucket=bucket, Key=key + ".reason.json", ContentType="application/json",
        Body=json.dumps({"chunk_key": chunk_key, "reason": reason}).encode(),
    )
    return key


def render_row_rejects(rejects: Sequence[RejectedRow]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "reason", "line"])
    for reject in sorted(rejects, key=lambda r: r.row):
        writer.writerow([reject.row, reject.reason, reject.line])
    return out.getvalue().encode()


def quarantine_rows(s3, bucket: str, prefix: str, chunk_key: str,
                    rejects: Sequence[RejectedRow]) -> str:
    failpoint("quarantine", chunk_key)
    key = quarantine_key(prefix, chunk_key, "rows")
    s3.put_object(Bucket=bucket, Key=key, Body=render_row_rejects(rejects),
                  ContentType="text/csv")
    return key
