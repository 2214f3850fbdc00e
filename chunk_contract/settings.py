"""Settings read from the environment, each declared once: a field of a component's frozen
settings dataclass says its variable, its default, its allowed range and (in its comment) what
it means; ``read_settings`` reads them all, ``check_ranges`` checks them.

One rule for every component (the producer, the trigger, the worker): a variable that is
unset, empty or blank takes its default. ``CHUNK_PREFIX=`` therefore means ``stream_chunks/``
everywhere; it cannot mean "the bucket's root", which the worker could not tell from its own
prefixes. A required setting (one without a default) unset or empty is an error naming its
variable; so is a value that does not parse or is out of range.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar

T = TypeVar("T")
_FLAGS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


class SettingError(ValueError):
    """A setting is missing, malformed or out of range; the message names the variable."""


class MissingSetting(SettingError):
    def __init__(self, variable: str) -> None:
        super().__init__(f"environment variable {variable} is required but not set")
        self.variable = variable


class InvalidSetting(SettingError):
    """A setting's value cannot be used."""


@dataclass(frozen=True)
class Range:
    """Allowed values: ``low``/``high`` None is unbounded; an open end excludes the bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        return f"{left}{low}, {high}{right}"

    def contains(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def check(self, variable: str, value: Any, error: type[SettingError] = InvalidSetting) -> None:
        if not self.contains(float(value)):
            raise error(f"{variable}={value} is out of range: allowed {self}")


@dataclass(frozen=True)
class Spec:
    variable: str
    range: Range | None
    choices: tuple[str, ...] | None


def setting(variable: str, default: Any, *, low: float | None = None,
            high: float | None = None, low_open: bool = False, high_open: bool = False,
            choices: tuple[str, ...] | None = None) -> Any:
    """A settings field read from ``variable``, ``default`` when it is unset or empty."""
    bounded = any(b is not None for b in (low, high))
    spec = Spec(variable, Range(low, high, low_open, high_open) if bounded else None, choices)
    return dataclasses.field(default=default, metadata={"setting": spec})


def required(variable: str) -> dict[str, Spec]:
    """The metadata of a settings field without a default: ``field(metadata=required(...))``
    (a ``field`` call, so that type checkers see no default)."""
    return {"setting": Spec(variable, None, None)}


def spec_of(field: dataclasses.Field) -> Spec | None:
    return field.metadata.get("setting")


def _parser(annotation: Any) -> Callable[[str], Any]:
    """How a field's text is read, from its type (``X | None`` reads as ``X``)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        return _flag
    if annotation in (int, float):
        return annotation
    return str


def _flag(raw: str) -> bool:
    try:
        return _FLAGS[raw.lower()]
    except KeyError:
        raise ValueError(raw) from None


def read_settings(cls: type[T], env: Mapping[str, str], **given: Any) -> T:
    """``cls`` built from ``env``: every ``setting`` field whose variable is set (not empty),
    parsed by its type; the others keep their defaults. ``given`` fills fields that are no
    plain variable (a URL built from a secret, say). Ranges are ``check_ranges``' business."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        spec = spec_of(field)
        if spec is None or field.name in given:
            continue
        raw = env.get(spec.variable, "").strip()
        if not raw:
            if field.default is MISSING and field.default_factory is MISSING:
                raise MissingSetting(spec.variable)
            continue
        if spec.choices is not None:
            raw = raw.lower()
            if raw not in spec.choices:
                raise InvalidSetting(f"{spec.variable}={raw!r} is not one of "
                                     f"{', '.join(spec.choices)}")
        parse = _parser(hints[field.name])
        try:
            values[field.name] = parse(raw)
        except (ValueError, ArithmeticError) as exc:
            kind = "flag: use true or false" if parse is _flag else parse.__name__
            raise InvalidSetting(f"{spec.variable}={raw!r} is not a valid {kind}") from exc
    return cls(**values, **given)


def check_ranges(settings: Any, error: type[SettingError] = InvalidSetting) -> None:
    """Every ``setting`` field that is set within its range, or ``error`` naming the variable."""
    for field in dataclasses.fields(settings):
        spec = spec_of(field)
        value = getattr(settings, field.name)
        if spec is not None and spec.range is not None and value is not None:
            spec.range.check(spec.variable, value, error)
