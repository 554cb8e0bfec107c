"""Typed dataclasses from TOML or JSON tables: the one coercion every config section goes through.

A field's annotation is its type. Ints are accepted for float fields (and become floats); bools
are never accepted for numbers; ``X | None`` accepts ``None``; ``list[X]`` and ``dict[str, X]``
are checked item by item; a nested dataclass is built from a nested table by its own
``from_dict(table, where)`` when it has one, else field by field. An unknown field, a wrong type
or a non-table is a one-line :class:`UsageError` naming ``where.field``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from veilfed.errors import UsageError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def check(value: Any, tp: Any, where: str) -> Any:
    """``value`` converted to ``tp``, or a one-line UsageError naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return check(value, arg, where)
            except UsageError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        from_dict = getattr(tp, "from_dict", None)
        return from_dict(value, where) if from_dict is not None else build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UsageError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): check(v, item, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise UsageError(f"{where}: expected {tp.__name__}, got bool {value!r}")
    if not isinstance(value, tp):
        raise UsageError(
            f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    return value


def typed_fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    """``data``'s fields converted to ``cls``'s field types (the keyword arguments of ``cls``)."""
    if not isinstance(data, dict):
        raise UsageError(f"{_prefix(where)}expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise UsageError(f"{_prefix(where)}unknown field {unknown[0]!r}; valid: {', '.join(names)}")
    return {k: check(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}


def build(cls: type, data: Any, where: str) -> Any:
    """An instance of the dataclass ``cls`` from the table ``data`` (fields checked, see above)."""
    return cls(**typed_fields(cls, data, where))
