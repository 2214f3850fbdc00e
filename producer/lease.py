"""One producer writes a stream at a time: a lease held in the stream's state object.

The state object (``$STATE_PREFIX/producer.json``) names the producer that holds the stream
(``lease_owner``) and until when (``lease_expires_at``). Every write of it is conditional -
If-Match with the ETag this producer last read or wrote, If-None-Match: * when there is none
yet - so two producers can never both believe they hold the stream:

- at start, a producer refuses a lease another one holds and that has not expired
  (``StreamLeased``), unless told to take it over; taking it is itself a conditional write,
  so of two producers starting together one wins;
- it renews the lease with the state write after every chunk; a write whose condition fails
  means another producer took the stream over, and it stops at once (``LeaseLost``);
- when it stops, it lets go (the owner cleared), so the next producer starts at once.

A producer that crashed keeps the stream until its lease expires: ``PRODUCER_LEASE_SECONDS``
(60 s) after its next chunk was due. ``--take-over`` starts at once; use it only when the
other producer is known to be gone. Should an old producer still be alive after all (paused
past its lease, say), the most it can do is upload one chunk whose number the new producer
also uses: its state write then fails and it stops, and the worker rejects the second chunk
with that number as a duplicate (docs/detection-semantics.md).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from producer.state import ProducerState
from producer.store import ObjectStore, WriteConflict


class StreamLeased(Exception):
    """Another producer holds the stream."""


class LeaseLost(Exception):
    """Another producer took the stream over while this one was writing it."""


def new_owner() -> str:
    """Who this producer is, for an operator reading the state object."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def refusal(saved: ProducerState | None, now: datetime, take_over: bool) -> str | None:
    """Why this producer may not take the stream, or None: a lease held by another producer
    that has not expired at ``now`` (``take_over`` ignores it)."""
    if saved is None or not saved.lease_owner or take_over:
        return None
    expires = datetime.fromisoformat(saved.lease_expires_at)
    if expires <= now:
        return None
    return (f"{saved.lease_owner}, its lease runs until {saved.lease_expires_at}: stop it"
            " first; if it is gone, wait for the lease to expire or start with --take-over")


class Lease:
    """This producer's hold on the stream: every state write goes through it."""

    def __init__(self, store: ObjectStore, key: str, *, etag: str | None, owner: str,
                 seconds: float, interval: float, now: Callable[[], datetime]) -> None:
        self._store, self._key = store, key
        self._etag = etag  # of the state object as last read or written; None: there is none
        self.owner = owner
        self._span = timedelta(seconds=seconds + interval)
        self._now = now
        self.held = False

    def take(self, state: ProducerState) -> None:
        """Write ``state`` as this producer's; ``StreamLeased`` if another got there first."""
        try:
            self._write(state, self.owner)
        except WriteConflict as exc:
            raise StreamLeased(f"another producer took the stream as this one started ({exc})"
                               ) from exc
        self.held = True

    def renew(self, state: ProducerState) -> None:
        """Save the position and extend the lease; ``LeaseLost`` if the stream is not ours."""
        try:
            self._write(state, self.owner)
        except WriteConflict as exc:
            self.held = False
            raise LeaseLost(f"another producer took the stream over ({exc}): this one stops"
                            ) from exc

    def release(self, state: ProducerState) -> None:
        """Save the position and let go of the stream."""
        if self.held:
            self._write(state, "")
            self.held = False

    def _write(self, state: ProducerState, owner: str) -> None:
        expires = (self._now() + self._span).isoformat() if owner else ""
        body = replace(state, lease_owner=owner, lease_expires_at=expires).to_json()
        self._etag = self._store.put_if(self._key, body, self._etag)
