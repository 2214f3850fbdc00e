"""The producer's settings, read once from the environment; CLI flags override them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from chunk_contract import layout


class MissingSetting(ValueError):
    """A required environment variable is not set."""

    def __init__(self, variable: str) -> None:
        super().__init__(f"environment variable {variable} is required but not set")
        self.variable = variable


class InvalidSetting(ValueError):
    """An environment variable or flag has a value that cannot be used."""


@dataclass(frozen=True)
class ProducerSettings:
    bucket: str | None = None  # BUCKET; required unless --dry-run writes chunks locally
    chunk_prefix: str = layout.CHUNK_PREFIX  # CHUNK_PREFIX
    reference_key: str = layout.REFERENCE_KEY  # REFERENCE_KEY
    state_prefix: str = layout.STATE_PREFIX  # STATE_PREFIX
    rows_per_chunk: int = 10_000  # ROWS_PER_CHUNK
    interval: float = 1.0  # CHUNK_INTERVAL_SECONDS; 0 = as fast as possible
    # PRODUCER_LEASE_SECONDS: how long past its next chunk's due time a producer that stopped
    # renewing (crashed) keeps the stream from another (producer/lease.py)
    lease_seconds: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProducerSettings:
        env = os.environ if environ is None else environ
        defaults = cls()
        settings = cls(
            bucket=env.get("BUCKET") or None,
            chunk_prefix=env.get("CHUNK_PREFIX", defaults.chunk_prefix),
            reference_key=env.get("REFERENCE_KEY", defaults.reference_key),
            state_prefix=env.get("STATE_PREFIX", defaults.state_prefix),
            rows_per_chunk=_parse(env, "ROWS_PER_CHUNK", int, defaults.rows_per_chunk),
            interval=_parse(env, "CHUNK_INTERVAL_SECONDS", float, defaults.interval),
            lease_seconds=_parse(env, "PRODUCER_LEASE_SECONDS", float, defaults.lease_seconds),
        )
        settings.validate()
        return settings

    def override(self, **changes: Any) -> ProducerSettings:
        """A copy with the CLI flags that were given (``None`` means "not given")."""
        settings = replace(self, **{k: v for k, v in changes.items() if v is not None})
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.rows_per_chunk < 1:
            raise InvalidSetting(f"rows per chunk must be at least 1, got {self.rows_per_chunk}")
        if not self.interval >= 0:  # also rejects NaN
            raise InvalidSetting(f"interval must be >= 0 seconds, got {self.interval}")
        if not 1 <= self.lease_seconds <= 86_400:
            raise InvalidSetting(f"PRODUCER_LEASE_SECONDS must be within [1, 86400], got"
                                 f" {self.lease_seconds}")

    def require_bucket(self) -> str:
        if not self.bucket:
            raise MissingSetting("BUCKET")
        return self.bucket

    @property
    def state_key(self) -> str:
        return f"{self.state_prefix}producer.json"


def _parse(env: Mapping[str, str], name: str, kind: type, default: object):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise InvalidSetting(
            f"environment variable {name}={raw!r} is not a valid {kind.__name__}"
        ) from exc
