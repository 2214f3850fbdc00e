"""The rules' thresholds: their values, the environment variables that set them, how those are
parsed and the ranges they must fall in, in one place (docs/detection-semantics.md).

The worker reads them from its environment (``thresholds_from_env``); ``replay --rule``, the
demo's ``--rule`` and the bench take the same ``NAME=VALUE`` spelling, NAME the variable
(``PATID2_MIN_COUNT=60``), through ``with_rules``: a value means the same everywhere and is
refused everywhere for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from chunk_contract.settings import InvalidSetting, Range


class RuleError(InvalidSetting):
    """A threshold is malformed or out of its range; the message names the variable."""


@dataclass(frozen=True)
class Thresholds:
    """The rules' constants (the documented defaults); tests use small ones."""

    upgrade_min_total: int = 50_000  # PatId1: total(m) > this
    upgrade_count_percentile: float = 0.90  # PatId1: txn_count >= this percentile
    upgrade_weight_percentile: float = 0.10  # PatId1: avg_weight <= this percentile
    child_min_count: int = 80  # PatId2: txn_count >= this
    child_max_avg_amount: Decimal = Decimal(23)  # PatId2: amount_sum < this * txn_count
    dei_min_female: int = 100  # PatId3: female(m) > this (and female < male)


@dataclass(frozen=True)
class Rule:
    """One threshold: its ``Thresholds`` field, its variable, its type and its allowed range."""

    field: str
    variable: str
    kind: type
    range: Range

    def parse(self, raw: str) -> int | float | Decimal:
        try:
            value = self.kind(raw.strip())
        except (ValueError, ArithmeticError, InvalidOperation) as exc:
            raise RuleError(f"{self.variable}={raw!r} is not a valid "
                            f"{self.kind.__name__}") from exc
        self.check(value)
        return value

    def check(self, value: int | float | Decimal) -> None:
        """RuleError unless ``value`` is within the range (NaN never is, nor an infinite
        amount)."""
        if isinstance(value, Decimal) and not value.is_finite():
            raise RuleError(f"{self.variable}={value} is out of range: allowed {self.range}")
        self.range.check(self.variable, value, RuleError)

RULES: tuple[Rule, ...] = (
    Rule("upgrade_min_total", "PATID1_MIN_TOTAL", int, Range(0)),
    Rule("upgrade_count_percentile", "PATID1_COUNT_PERCENTILE", float, Range(0, 1, True, True)),
    Rule("upgrade_weight_percentile", "PATID1_WEIGHT_PERCENTILE", float,
         Range(0, 1, True, True)),
    Rule("child_min_count", "PATID2_MIN_COUNT", int, Range(1)),
    Rule("child_max_avg_amount", "PATID2_MAX_AVG_AMOUNT", Decimal, Range(0, low_open=True)),
    Rule("dei_min_female", "PATID3_MIN_FEMALE", int, Range(0)),
)
BY_VARIABLE = {rule.variable: rule for rule in RULES}
# The variable of each Thresholds field: {"child_min_count": "PATID2_MIN_COUNT", ...}
THRESHOLD_ENV = {rule.field: rule.variable for rule in RULES}
assert [r.field for r in RULES] == [f.name for f in fields(Thresholds)]


def validate(thresholds: Thresholds) -> Thresholds:
    """``thresholds`` if every value is within its range, else RuleError naming the variable."""
    for rule in RULES:
        rule.check(getattr(thresholds, rule.field))
    return thresholds


def thresholds_from_env(env: Mapping[str, str], base: Thresholds | None = None) -> Thresholds:
    """``base`` (the defaults) with every rule variable set in ``env`` applied, each parsed and
    range-checked; a variable set empty keeps its default."""
    changes: dict[str, Any] = {rule.field: rule.parse(env[rule.variable]) for rule in RULES
               if env.get(rule.variable, "").strip()}
    return validate(replace(base or Thresholds(), **changes))


def with_rules(base: Thresholds, assignments: Iterable[str]) -> Thresholds:
    """``base`` with ``NAME=VALUE`` overrides (``--rule PATID2_MIN_COUNT=60``), NAME one of the
    rule variables; parsed and range-checked exactly as the worker's environment is."""
    env: dict[str, str] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        name = name.strip().upper()
        if not sep or not value.strip():
            raise RuleError(f"--rule {assignment!r}: expected NAME=VALUE, NAME one of "
                            f"{', '.join(BY_VARIABLE)}")
        if name not in BY_VARIABLE:
            raise RuleError(f"--rule {assignment!r}: unknown rule {name}; one of "
                            f"{', '.join(BY_VARIABLE)}")
        env[name] = value
    return thresholds_from_env(env, base)


def rule_variables(assignments: Iterable[str]) -> dict[str, str]:
    """``--rule`` assignments checked and turned into the worker's environment,
    ``{"PATID2_MIN_COUNT": "40"}``: for the demo, which hands them to a worker process."""
    assignments = list(assignments)
    thresholds = with_rules(Thresholds(), assignments)
    given = {a.partition("=")[0].strip().upper() for a in assignments}
    return {rule.variable: str(getattr(thresholds, rule.field)) for rule in RULES
            if rule.variable in given}


def changed_rules(base: Thresholds, thresholds: Thresholds) -> dict[str, str]:
    """The rule variables whose value differs from ``base``: ``{name: value}``."""
    return {rule.variable: str(getattr(thresholds, rule.field)) for rule in RULES
            if getattr(base, rule.field) != getattr(thresholds, rule.field)}
