"""Swept parameters: `--param FIELD=A|B|C` (a grid of values) or `--param FIELD=LOW..HIGH` (a
log-uniform range), checked and typed against a job's config dataclass. Plain Python; the Ray
Tune search space is built from these in cvray.on_ray.

FIELD is a config field under its flag's name (`lr`, `batch-size`, `head-lr-mult`,
`style-weight`, ...). Values parse as the field's type: numbers, booleans (true/false), strings,
and tuples with commas inside one value (`--param aug=flip|flip,crop|all`; `--param
style-layers=relu1_1,relu2_1|relu1_1,relu3_1`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cvray.errors import ConfigError

RANGE_SEPARATOR = ".."
GRID_SEPARATOR = "|"


@dataclass(frozen=True)
class ParamSpec:
    """One swept config field: a grid of typed values, or a log-uniform range (low, high)."""

    field: str
    values: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    integer: bool = False
    """A range over a whole-number field (drawn as integers)."""

    @property
    def flag(self) -> str:
        return self.field.replace("_", "-")

    @property
    def is_range(self) -> bool:
        return self.values is None


def _base_type(annotation) -> Any:
    """The field's type without `| None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def field_types(config_cls) -> dict[str, Any]:
    hints = typing.get_type_hints(config_cls)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(config_cls)}


def parse_value(text: str, kind, flag: str):
    """`text` as a value of type `kind` (ConfigError naming the flag when it does not parse)."""
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if kind in (int, float, str):
            value = kind(text)
            if kind is float and not math.isfinite(value):
                raise ValueError(text)
            return value
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            parts = tuple(parse_value(p, item, flag) for p in text.split(",") if p.strip())
            if not parts:
                raise ValueError(text)
            return parts
    except (ValueError, ConfigError):
        raise ConfigError(f"--param {flag}: {text!r} is not a {_type_name(kind)}") from None
    raise ConfigError(f"--param {flag}: a field of type {_type_name(kind)} cannot be swept")


def _type_name(kind) -> str:
    if typing.get_origin(kind) is tuple:
        return f"comma-separated list of {_type_name(typing.get_args(kind)[0])}"
    return {int: "whole number", float: "number", bool: "true/false", str: "string"}.get(kind, str(kind))


def parse_param(text: str, config_cls, sweepable: Iterable[str]) -> ParamSpec:
    """`FIELD=A|B|C` or `FIELD=LOW..HIGH` -> ParamSpec; ConfigError (one line) for an unknown or
    unsweepable field, values that do not parse, an empty grid, a bad range."""
    flag, eq, spec = text.partition("=")
    flag = flag.strip()
    field = flag.replace("-", "_")
    allowed = sorted(sweepable)
    if not eq or field not in allowed:
        names = ", ".join(name.replace("_", "-") for name in allowed)
        raise ConfigError(f"--param {text!r}: expected FIELD=A|B|C or FIELD=LOW..HIGH with FIELD one of {names}")
    kind = field_types(config_cls)[field]
    if RANGE_SEPARATOR in spec and GRID_SEPARATOR not in spec:
        low_text, _, high_text = spec.partition(RANGE_SEPARATOR)
        if kind not in (int, float):
            raise ConfigError(f"--param {flag}: a range LOW..HIGH needs a numeric field; give values A|B|C")
        low, high = (parse_value(t, float, flag) for t in (low_text, high_text))
        if not 0 < low <= high:
            raise ConfigError(f"--param {flag}: the range {spec} needs 0 < LOW <= HIGH (it is log-uniform)")
        return ParamSpec(field, low=low, high=high, integer=kind is int)
    values = tuple(parse_value(v, kind, flag) for v in spec.split(GRID_SEPARATOR) if v.strip())
    if not values:
        raise ConfigError(f"--param {flag}: no values (give A|B|C or LOW..HIGH)")
    return ParamSpec(field, values=tuple(dict.fromkeys(values)))


def check_not_fixed(params: Iterable[ParamSpec], given_flags: Iterable[str]) -> None:
    """A flag given as a fixed value must not also be swept (which would win is unclear)."""
    given = set(given_flags)
    for param in params:
        if param.field in given:
            raise ConfigError(f"--{param.flag} is swept by --param {param.flag}=...: drop the fixed --{param.flag}")


def grid_size(params: Iterable[ParamSpec]) -> int:
    """Trials of a grid search over the value lists (ranges count once per sample)."""
    return math.prod(len(p.values) for p in params if not p.is_range)
