"""The worker's native allocators, set up for a long-running process: glibc's malloc with
few arenas and large blocks given back, and Arrow's buffers from jemalloc.

Two glibc defaults keep memory that a batch freed resident in the worker's processes:

- every thread that allocates gets its own arena (up to 8 per core) and freed memory stays
  in it: the worker's Python has a main thread, a Spark thread and S3 fetch threads, the JVM
  dozens of threads;
- a freed block over the mmap threshold (128 KiB) raises the threshold, up to 32 MiB, so
  the next batch's multi-megabyte buffers (Arrow columns, COPY text) come from the heap,
  where free pages are rarely returned.

Measured on the driver (8 batches of 30 real chunks, two batches' results held): peak RSS
742 MiB as glibc comes, 668 with two arenas, 610 with the fixed threshold (docs/performance.md).
A variable the user already set is left alone, in this process and in its children.

Arrow (the batches' results, the pairs' COPY text) allocates from its own pool, mimalloc by
default, which kept ~70 MiB more resident than jemalloc in a 300-chunk backlog for the same
CPU (Python peak 359 vs 288 MiB, docs/performance.md); ``ARROW_DEFAULT_MEMORY_POOL`` wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import MutableMapping

ARENA_MAX = 2
MMAP_THRESHOLD = 128 * 1024
# what glibc reads at a process's start; the JVM and Spark's Python workers inherit them
MALLOC_ENV = {"MALLOC_ARENA_MAX": str(ARENA_MAX), "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # mallopt parameters, from glibc's <malloc.h>


def _mallopt(param: int, value: int) -> bool:
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        return libc.mallopt(param, value) == 1
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to set
        return False


def tune_malloc(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set this process's malloc as ``MALLOC_ENV`` says (``mallopt``; glibc read the
    environment only at start-up), and put ``MALLOC_ENV`` into ``environ`` for the
    processes started later. Variables already in ``environ`` win. Returns what was set."""
    applied: dict[str, str] = {}
    for name, value in MALLOC_ENV.items():
        if name in environ:
            continue
        param = _M_ARENA_MAX if name == "MALLOC_ARENA_MAX" else _M_MMAP_THRESHOLD
        if _mallopt(param, int(value)):
            environ[name] = value
            applied[name] = value
    return applied


ARROW_POOL_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}


def tune_arrow_pool(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Put ``ARROW_POOL_ENV`` into ``environ`` unless the user set it; what was set. Call it
    before pyarrow's first import: Arrow reads the variable once, and it covers the C++
    code's allocations too (``pyarrow.set_memory_pool`` only pyarrow's own). A pyarrow
    built without jemalloc warns and keeps its default."""
    if "ARROW_DEFAULT_MEMORY_POOL" in environ:
        return {}
    environ.update(ARROW_POOL_ENV)
    return dict(ARROW_POOL_ENV)
