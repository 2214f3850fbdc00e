"""The trigger's settings, read once from the environment (README "Shared conventions")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_CHUNK_PREFIX = "stream_chunks/"
DEFAULT_CHUNK_SUFFIX = ".csv"


class MissingSetting(RuntimeError):
    """A required environment variable is not set."""


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise MissingSetting(f"environment variable {name} is required but not set")
    return value


@dataclass(frozen=True)
class TriggerSettings:
    bucket: str  # BUCKET: records from any other bucket are skipped, never enqueued
    queue_url: str  # QUEUE_URL: the chunk queue; a URL ending in .fifo selects FIFO messages
    chunk_prefix: str = DEFAULT_CHUNK_PREFIX  # CHUNK_PREFIX
    chunk_suffix: str = DEFAULT_CHUNK_SUFFIX  # CHUNK_SUFFIX

    @property
    def fifo(self) -> bool:
        return self.queue_url.endswith(".fifo")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TriggerSettings:
        env = os.environ if environ is None else environ
        return cls(
            bucket=_required(env, "BUCKET"),
            queue_url=_required(env, "QUEUE_URL"),
            chunk_prefix=env.get("CHUNK_PREFIX") or DEFAULT_CHUNK_PREFIX,
            chunk_suffix=env.get("CHUNK_SUFFIX") or DEFAULT_CHUNK_SUFFIX,
        )
