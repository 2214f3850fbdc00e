"""The trigger's settings, read once from the environment (docs/configuration.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from chunk_contract import layout
from chunk_contract.settings import (
    InvalidSetting,
    MissingSetting,
    check_ranges,
    read_settings,
    required,
    setting,
)

__all__ = ["InvalidSetting", "MissingSetting", "TriggerSettings"]


@dataclass(frozen=True)
class TriggerSettings:
    # records from any other bucket are skipped, never enqueued
    bucket: str = field(metadata=required("BUCKET"))
    # the chunk queue; a URL ending in .fifo selects FIFO messages
    queue_url: str = field(metadata=required("QUEUE_URL"))
    chunk_prefix: str = setting("CHUNK_PREFIX", layout.CHUNK_PREFIX)
    chunk_suffix: str = setting("CHUNK_SUFFIX", layout.CHUNK_SUFFIX)
    # SendMessageBatch retries of failed entries; the delay doubles per retry (capped at 2 s),
    # so the defaults wait 1.4 s at most.
    enqueue_max_attempts: int = setting("ENQUEUE_MAX_ATTEMPTS", 4, low=1)
    enqueue_base_delay: float = setting("ENQUEUE_BASE_DELAY_SECONDS", 0.2, low=0)

    @property
    def fifo(self) -> bool:
        return self.queue_url.endswith(".fifo")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TriggerSettings:
        settings = read_settings(cls, os.environ if environ is None else environ)
        check_ranges(settings)
        return settings
