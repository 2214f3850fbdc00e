"""The trigger's settings, read once from the environment (docs/configuration.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chunk_contract import layout

DEFAULT_ENQUEUE_MAX_ATTEMPTS = 4
DEFAULT_ENQUEUE_BASE_DELAY = 0.2


class MissingSetting(RuntimeError):
    """A required environment variable is not set."""


class InvalidSetting(ValueError):
    """An environment variable holds a value the trigger cannot use."""


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise MissingSetting(f"environment variable {name} is required but not set")
    return value


def _number(environ: Mapping[str, str], name: str, kind: type, default: float,
            minimum: float) -> Any:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError as exc:
        raise InvalidSetting(f"environment variable {name}={raw!r} is not a {kind.__name__}") \
            from exc
    if value < minimum:
        raise InvalidSetting(f"environment variable {name}={raw!r} must be >= {minimum}")
    return value


@dataclass(frozen=True)
class TriggerSettings:
    bucket: str  # BUCKET: records from any other bucket are skipped, never enqueued
    queue_url: str  # QUEUE_URL: the chunk queue; a URL ending in .fifo selects FIFO messages
    chunk_prefix: str = layout.CHUNK_PREFIX  # CHUNK_PREFIX
    chunk_suffix: str = layout.CHUNK_SUFFIX  # CHUNK_SUFFIX
    # ENQUEUE_MAX_ATTEMPTS / ENQUEUE_BASE_DELAY_SECONDS: SendMessageBatch retries of failed
    # entries; the delay doubles per retry (capped at 2 s), so the defaults wait 1.4 s at most.
    enqueue_max_attempts: int = DEFAULT_ENQUEUE_MAX_ATTEMPTS
    enqueue_base_delay: float = DEFAULT_ENQUEUE_BASE_DELAY

    @property
    def fifo(self) -> bool:
        return self.queue_url.endswith(".fifo")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TriggerSettings:
        env = os.environ if environ is None else environ
        return cls(
            bucket=_required(env, "BUCKET"),
            queue_url=_required(env, "QUEUE_URL"),
            chunk_prefix=env.get("CHUNK_PREFIX") or layout.CHUNK_PREFIX,
            chunk_suffix=env.get("CHUNK_SUFFIX") or layout.CHUNK_SUFFIX,
            enqueue_max_attempts=_number(env, "ENQUEUE_MAX_ATTEMPTS", int,
                                         DEFAULT_ENQUEUE_MAX_ATTEMPTS, minimum=1),
            enqueue_base_delay=_number(env, "ENQUEUE_BASE_DELAY_SECONDS", float,
                                       DEFAULT_ENQUEUE_BASE_DELAY, minimum=0),
        )
