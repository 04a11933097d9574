"""The daemon's config keys: names as written in TOML, environment and flags, and their parsers.

Keys are dotted ``section.name`` (``server.socket``, ``disk.fsync``); top-level keys have no
section. Each key is derived from a field of the frozen dataclass it ends up in, so defaults live
in one place (the dataclass). Naming rule: a field ``*_bytes`` is written ``*_size`` and takes a
size with units (``"512MiB"``), except ``capacity_bytes``, written ``capacity``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tierd.units import parse_size

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class ConfigKey:
    """One settable value: ``path`` as written in TOML (``disk.capacity``) and the field it fills."""

    path: str
    field_name: str
    parse: Callable[[object], object]
    kind: str  # for messages and the README's reference: "size", "int", "float", ...


def toml_name(field_name: str) -> str:
    """``capacity_bytes`` -> ``capacity``; ``chunk_bytes`` -> ``chunk_size``; others unchanged."""
    if field_name == "capacity_bytes":
        return "capacity"
    if field_name.endswith("_bytes"):
        return field_name.removesuffix("_bytes") + "_size"
    return field_name


def keys_of(cls: type, section: str, skip: frozenset[str] = frozenset()) -> list[ConfigKey]:
    """A ``ConfigKey`` per field of dataclass ``cls`` whose type has a parser."""
    hints = typing.get_type_hints(cls)
    out: list[ConfigKey] = []
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        parse, kind = parser_for(hints[field.name], field.name)
        name = toml_name(field.name)
        out.append(ConfigKey(f"{section}.{name}" if section else name, field.name, parse, kind))
    return out


def _any_input(parse: Callable[[str | int], int]) -> Callable[[object], object]:
    """``parse`` as a parser of any config value (a value of another type fails inside it)."""
    def parse_any(value: object) -> object:
        return parse(value)  # type: ignore[arg-type]
    return parse_any


def parser_for(hint: object, field_name: str) -> tuple[Callable[[object], object], str]:
    """The parser of a field's type; ``TypeError`` for a type no config source can write."""
    args = typing.get_args(hint)
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if is_union and type(None) in args:
        inner = next(arg for arg in args if arg is not type(None))
        parse, kind = parser_for(inner, field_name)
        return _optional(parse), f"{kind} or empty"
    if typing.get_origin(hint) is tuple and args == (str, Ellipsis):
        return parse_str_list, "list of strings"
    if hint is bool:
        return parse_bool, "bool"
    if hint is int:
        if field_name.endswith("_bytes"):
            return _any_input(parse_size), "size"
        if field_name.endswith("_mode"):
            return parse_mode, "octal mode"
        return parse_int, "int"
    if hint is float:
        return parse_float, "float"
    if hint is str:
        return parse_str, "string"
    if hint is Path:
        return parse_path, "path"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_parser(hint), "one of " + "|".join(str(m.value) for m in hint)
    raise TypeError(f"config field {field_name} has type {hint!r}, which no config source can write")


def _optional(parse: Callable[[object], object]) -> Callable[[object], object]:
    def parse_optional(value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parse(value)
    return parse_optional


def _enum_parser(cls: type[enum.Enum]) -> Callable[[object], object]:
    def parse_enum(value: object) -> enum.Enum:
        if isinstance(value, cls):
            return value
        wanted = str(value).strip().lower().replace("-", "_")
        for member in cls:
            if str(member.value).lower() == wanted or member.name.lower() == wanted:
                return member
        choices = ", ".join(str(m.value) for m in cls)
        raise ValueError(f"expected one of {choices}, got {value!r}")
    return parse_enum


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip().replace("_", ""))
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def parse_float(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value) if isinstance(value, (int, float)) else float(str(value).strip())
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def parse_str(value: object) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


def parse_str_list(value: object) -> tuple[str, ...]:
    """A TOML array of strings, or one string of comma-separated items (environment, flags)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"expected a list of strings, got {value!r}")
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(item.strip() for item in items if item.strip())


def parse_path(value: object) -> Path:
    text = parse_str(value).strip()
    if not text:
        raise ValueError("expected a path, got an empty string")
    return Path(text).expanduser()


def parse_mode(value: object) -> int:
    """A file mode: the TOML integer ``0o660`` or the string ``"0660"`` (read as octal)."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        try:
            mode = int(str(value).strip().removeprefix("0o"), 8)
        except ValueError:
            raise ValueError(f"expected an octal file mode like \"0660\", got {value!r}") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"expected a file mode between 0000 and 0777, got {oct(mode)}")
    return mode
