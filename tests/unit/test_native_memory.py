"""The worker's malloc settings: set in this process and handed to the JVM it starts."""

from __future__ import annotations

import os
import subprocess
import sys

from spark_detector.worker.native_memory import MALLOC_ENV, tune_arrow_pool, tune_malloc


def test_malloc_settings_reach_the_environment_of_later_processes():
    environ: dict[str, str] = {}

    applied = tune_malloc(environ)

    # glibc (this machine, the image): both set here, and exported for the JVM
    assert applied == MALLOC_ENV == {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}
    assert environ == MALLOC_ENV


def test_a_users_own_malloc_setting_is_left_alone():
    environ = {"MALLOC_ARENA_MAX": "4"}

    applied = tune_malloc(environ)

    assert "MALLOC_ARENA_MAX" not in applied
    assert environ["MALLOC_ARENA_MAX"] == "4"
    assert environ["MALLOC_MMAP_THRESHOLD_"] == "131072"


def test_arrow_buffers_come_from_jemalloc_unless_the_user_names_a_pool():
    environ: dict[str, str] = {}
    assert tune_arrow_pool(environ) == {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}
    assert environ == {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}
    # Arrow reads it at its first use: a fresh interpreter shows the pool in force
    pool = subprocess.run(
        [sys.executable, "-c", "import pyarrow; print(pyarrow.default_memory_pool().backend_name)"],
        env={**os.environ, **environ}, capture_output=True, text=True, check=True).stdout.strip()
    assert pool == "jemalloc"

    users = {"ARROW_DEFAULT_MEMORY_POOL": "system"}
    assert tune_arrow_pool(users) == {}
    assert users == {"ARROW_DEFAULT_MEMORY_POOL": "system"}
