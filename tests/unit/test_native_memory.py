"""The worker's malloc settings: set in this process and handed to the JVM it starts."""

from __future__ import annotations

from spark_detector.native_memory import MALLOC_ENV, tune_malloc


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
