"""The producer's settings, read once from the environment; CLI flags override them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from chunk_contract import layout
from chunk_contract.settings import (
    InvalidSetting,
    MissingSetting,
    check_ranges,
    read_settings,
    setting,
)

__all__ = ["InvalidSetting", "MissingSetting", "ProducerSettings"]


@dataclass(frozen=True)
class ProducerSettings:
    bucket: str | None = setting("BUCKET", None)  # required unless --dry-run writes locally
    chunk_prefix: str = setting("CHUNK_PREFIX", layout.CHUNK_PREFIX)
    reference_key: str = setting("REFERENCE_KEY", layout.REFERENCE_KEY)
    state_prefix: str = setting("STATE_PREFIX", layout.STATE_PREFIX)
    rows_per_chunk: int = setting("ROWS_PER_CHUNK", 10_000, low=1)
    interval: float = setting("CHUNK_INTERVAL_SECONDS", 1.0, low=0)  # 0 = as fast as possible
    # How long past its next chunk's due time a producer that stopped renewing (crashed)
    # keeps the stream from another (producer/lease.py)
    lease_seconds: float = setting("PRODUCER_LEASE_SECONDS", 60.0, low=1, high=86_400)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProducerSettings:
        settings = read_settings(cls, os.environ if environ is None else environ)
        settings.validate()
        return settings

    def override(self, **changes: Any) -> ProducerSettings:
        """A copy with the CLI flags that were given (``None`` means "not given")."""
        settings = replace(self, **{k: v for k, v in changes.items() if v is not None})
        settings.validate()
        return settings

    def validate(self) -> None:
        check_ranges(self)

    def require_bucket(self) -> str:
        if not self.bucket:
            raise MissingSetting("BUCKET")
        return self.bucket

    @property
    def state_key(self) -> str:
        return f"{self.state_prefix}producer.json"
