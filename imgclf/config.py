"""params.yaml -> typed, validated config objects: the machinery every stage shares.

Each stage declares its own section as a frozen dataclass beside its logic (`SplitConfig` in
`imgclf/split.py`, `TrainConfig` in `imgclf/train.py`, ...), with `param()` fields that carry a
description and bounds; `load_section` reads the file and builds it, rejecting unknown, missing,
mistyped and out-of-range keys with one line naming the file and key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import yaml

from imgclf.errors import ConfigError


class Device(str):
    """The type of a device param: auto | cpu | mps | cuda | cuda:N (one GPU of several, e.g. one per queued run)."""


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def param(text: str, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None) -> Any:
    """A required dataclass field with a description and optional numeric bounds."""
    return field(metadata={"doc": text, "ge": ge, "gt": gt, "le": le, "lt": lt})


def read_params(path: str | os.PathLike) -> dict:
    """Read a params YAML file with safe_load; a missing or malformed file is a ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read params file ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_section(path: str | os.PathLike, section: str, cls: type) -> Any:
    """Load params.yaml's `section` into the config dataclass `cls`, validating every key."""
    data = read_params(path)
    if section not in data:
        raise ConfigError(f"{path}: missing section '{section}'")
    try:
        return parse_section(data[section], cls, section)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def parse_section(raw: Any, cls: type, prefix: str) -> Any:
    """Build `cls` from the mapping `raw`; keys are reported as `prefix.key`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}.{close[0]}'?)" if close else ""
            raise ConfigError(f"{prefix}.{key}: unknown key{hint}")
    values = {}
    for name, fld in fields.items():
        key = f"{prefix}.{name}"
        if name not in raw:
            raise ConfigError(f"{key}: missing key")
        values[name] = _coerce(raw[name], hints[name], key)
        _check_bounds(values[name], fld.metadata, key)
    config = cls(**values)
    if hasattr(config, "validate"):
        config.validate()
    return config


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type `hint`, converting only where the conversion is lossless."""
    if dataclasses.is_dataclass(hint):
        return parse_section(value, hint, key)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
        # `float | None`: YAML's null is "not set" (e.g. train.norm_weight_decay: null = as the rest).
        if value is None:
            return None
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _coerce(value, inner, key)
    if typing.get_origin(hint) is tuple:
        kinds = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(kinds):
            raise ConfigError(f"{key}: must be a list of {len(kinds)} numbers, got {value!r}")
        return tuple(_coerce(item, kind, f"{key}[{i}]") for i, (item, kind) in enumerate(zip(value, kinds)))
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if hint is Device:
        if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
            raise ConfigError(f"{key}: must be auto, cpu, mps, cuda or cuda:N; got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if hint is float:
        # PyYAML reads `1e-3` (no dot) as a string; accept it as the number it plainly is.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: must be a non-empty string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module


def _check_bounds(value: Any, meta: Any, key: str) -> None:
    """Enforce the ge/gt/le/lt bounds declared on a field."""
    checks = [("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
              ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)]
    for name, symbol, ok in checks:
        bound = meta.get(name)
        for item in value if isinstance(value, tuple) else (value,):  # a list param: each of its numbers
            if bound is not None and item is not None and not ok(item, bound):
                raise ConfigError(f"{key}: must be {symbol} {bound:g}, got {value!r}")
