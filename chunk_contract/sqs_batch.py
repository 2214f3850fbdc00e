"""Sending chunk messages with SendMessageBatch: entries, FIFO ids, bounded retry of failures.

The client is passed in. Entries SQS rejects because of the request itself (``SenderFault``)
are not retried: sending them again cannot succeed. Everything else is retried with
exponential backoff, a bounded number of times; what still fails raises ``EnqueueFailed``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chunk_contract.message import ChunkMessage

MAX_BATCH_ENTRIES = 10  # the SendMessageBatch limit


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4  # the first try included
    base_delay: float = 0.2  # seconds before the first retry; doubled each time
    max_delay: float = 2.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return min(self.max_delay, self.base_delay * 2 ** (retry - 1))


@dataclass(frozen=True)
class FailedEntry:
    message: ChunkMessage
    code: str
    reason: str


class EnqueueFailed(RuntimeError):
    """Some chunk messages were not accepted by SQS after all retries."""

    def __init__(self, failed: Sequence[FailedEntry], enqueued: Sequence[ChunkMessage]):
        self.failed = tuple(failed)
        self.enqueued = tuple(enqueued)
        keys = ", ".join(f"{f.message.key} ({f.code})" for f in self.failed)
        super().__init__(f"{len(self.failed)} chunk message(s) not enqueued: {keys}")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def fifo_ids(message: ChunkMessage) -> tuple[str, str]:
    """(MessageGroupId, MessageDeduplicationId) for a FIFO queue.

    One group per object keeps events of the same object in order without serialising
    unrelated chunks; a re-delivered S3 event of the same object version (same etag) is
    deduplicated by SQS. Hex digests: keys may hold characters the ids do not allow.
    """
    return _digest(message.bucket, message.key), _digest(message.bucket, message.key, message.etag)


def batch_entries(messages: Sequence[ChunkMessage], *, fifo: bool) -> list[dict[str, str]]:
    """One SendMessageBatch entry per message; ``Id`` is the message's index in ``messages``."""
    entries = []
    for index, message in enumerate(messages):
        entry = {"Id": str(index), "MessageBody": message.to_json()}
        if fifo:
            entry["MessageGroupId"], entry["MessageDeduplicationId"] = fifo_ids(message)
        entries.append(entry)
    return entries


def _send_once(sqs: Any, queue_url: str, entries: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Send one batch; return the failed entries as SQS reports them."""
    try:
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, reason = error.get("Code", "ClientError"), error.get("Message", str(exc))
        return [{"Id": e["Id"], "Code": code, "Message": reason, "SenderFault": False}
                for e in entries]
    except BotoCoreError as exc:
        return [{"Id": e["Id"], "Code": type(exc).__name__, "Message": str(exc),
                 "SenderFault": False} for e in entries]
    return list(response.get("Failed", []))


def send_batch(
    sqs: Any,
    queue_url: str,
    entries: list[dict[str, str]],
    *,
    retry: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, dict[str, Any]]:
    """Send up to 10 entries, retrying failed ones; return the entries that never got in, by Id."""
    if len(entries) > MAX_BATCH_ENTRIES:
        raise ValueError(f"a batch holds at most {MAX_BATCH_ENTRIES} entries, got {len(entries)}")
    by_id = {e["Id"]: e for e in entries}
    pending = list(entries)
    final: dict[str, dict[str, Any]] = {}
    for attempt in range(1, retry.max_attempts + 1):
        failed = _send_once(sqs, queue_url, pending)
        retriable = []
        for failure in failed:
            if failure.get("SenderFault"):
                final[failure["Id"]] = failure
            else:
                retriable.append(failure)
        if not retriable:
            return final
        if attempt == retry.max_attempts:
            final.update({f["Id"]: f for f in retriable})
            return final
        pending = [by_id[f["Id"]] for f in retriable]
        sleep(retry.delay(attempt))
    return final


def enqueue(
    sqs: Any,
    queue_url: str,
    messages: Sequence[ChunkMessage],
    *,
    fifo: bool,
    retry: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> list[ChunkMessage]:
    """Send every message in batches of 10; raise ``EnqueueFailed`` if any is not accepted.

    All batches are attempted even after one fails, so that as many chunks as possible are
    queued; a retry of the whole event re-sends the others, which the worker tolerates.
    """
    entries = batch_entries(messages, fifo=fifo)
    failures: dict[int, dict[str, Any]] = {}
    for start in range(0, len(entries), MAX_BATCH_ENTRIES):
        batch = entries[start : start + MAX_BATCH_ENTRIES]
        left = send_batch(sqs, queue_url, batch, retry=retry, sleep=sleep)
        failures.update((int(entry_id), failure) for entry_id, failure in left.items())
    enqueued = [m for i, m in enumerate(messages) if i not in failures]
    if failures:
        failed = [
            FailedEntry(
                message=messages[i],
                code=str(f.get("Code", "")),
                reason=str(f.get("Message", "")),
            )
            for i, f in sorted(failures.items())
        ]
        raise EnqueueFailed(failed, enqueued)
    return enqueued


def dlq_url(sqs, queue_url: str) -> str | None:
    """The DLQ behind a queue, from its redrive policy."""
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    policy = attrs.get("Attributes", {}).get("RedrivePolicy")
    if not policy:
        return None
    arn = json.loads(policy)["deadLetterTargetArn"]
    account, name = arn.split(":")[4], arn.split(":")[5]
    return sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
