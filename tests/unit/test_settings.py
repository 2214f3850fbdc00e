"""The environment reader every component shares (``chunk_contract.settings``): unset, empty or
blank means the default, for the producer, the trigger and the worker alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from chunk_contract.layout import CHUNK_PREFIX
from chunk_contract.settings import (
    InvalidSetting,
    MissingSetting,
    check_ranges,
    read_settings,
    required,
    setting,
)
from lambda_trigger.config import TriggerSettings
from producer.config import ProducerSettings
from spark_detector.config import WorkerSettings

REQUIRED = {"BUCKET": "b", "QUEUE_URL": "https://q/chunks", "DATABASE_URL": "postgresql://x/y"}


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_chunk_prefix_is_the_default_prefix_for_every_component(empty):
    env = {**REQUIRED, "CHUNK_PREFIX": empty}
    prefixes = {ProducerSettings.from_env(env).chunk_prefix,
                TriggerSettings.from_env(env).chunk_prefix,
                WorkerSettings.from_env(env).chunk_prefix}
    assert prefixes == {CHUNK_PREFIX}


def test_every_component_reads_a_set_prefix_alike():
    env = {**REQUIRED, "CHUNK_PREFIX": "in/"}
    assert {ProducerSettings.from_env(env).chunk_prefix, TriggerSettings.from_env(env).chunk_prefix,
            WorkerSettings.from_env(env).chunk_prefix} == {"in/"}


@dataclass(frozen=True)
class Example:
    name: str = field(metadata=required("EXAMPLE_NAME"))
    count: int = setting("EXAMPLE_COUNT", 3, low=1, high=10)
    ratio: float | None = setting("EXAMPLE_RATIO", None, low=0, low_open=True)
    on: bool = setting("EXAMPLE_ON", False)
    mode: str = setting("EXAMPLE_MODE", "a", choices=("a", "b"))


def test_a_setting_is_parsed_by_its_type_and_defaults_when_unset_or_empty():
    env = {"EXAMPLE_NAME": " x ", "EXAMPLE_COUNT": "", "EXAMPLE_RATIO": "0.5",
           "EXAMPLE_ON": "Yes", "EXAMPLE_MODE": "B"}
    got = read_settings(Example, env)
    assert got == Example(name="x", count=3, ratio=0.5, on=True, mode="b")


@pytest.mark.parametrize(("env", "error", "message"), [
    ({"EXAMPLE_NAME": ""}, MissingSetting, "EXAMPLE_NAME is required"),
    ({"EXAMPLE_NAME": " "}, MissingSetting, "EXAMPLE_NAME is required"),
    ({"EXAMPLE_COUNT": "3.5"}, InvalidSetting, "EXAMPLE_COUNT='3.5' is not a valid int"),
    ({"EXAMPLE_ON": "maybe"}, InvalidSetting, "EXAMPLE_ON='maybe' is not a valid flag"),
    ({"EXAMPLE_MODE": "c"}, InvalidSetting, "EXAMPLE_MODE='c' is not one of a, b"),
    ({"EXAMPLE_COUNT": "11"}, InvalidSetting,
     r"EXAMPLE_COUNT=11 is out of range: allowed \[1, 10\]"),
    ({"EXAMPLE_RATIO": "0"}, InvalidSetting,
     r"EXAMPLE_RATIO=0.0 is out of range: allowed \(0, inf\)"),
    ({"EXAMPLE_RATIO": "nan"}, InvalidSetting, "EXAMPLE_RATIO=nan is out of range"),
])
def test_a_bad_setting_names_its_variable(env, error, message):
    with pytest.raises(error, match=message):
        check_ranges(read_settings(Example, {"EXAMPLE_NAME": "x"} | env))
