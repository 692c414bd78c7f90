"""JSON Schemas from Python signatures: the arguments schema of a user-defined tool
function, derived from its type hints (`schema_from_signature`).

Used by `torpor.agent.registry.tool_from_function` when no explicit `parameters=` is
given; it knows nothing of tools beyond "the first parameter is the workspace".
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["schema_from_signature"]

_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    list: {"type": "array"},
    tuple: {"type": "array"},
    dict: {"type": "object"},
    type(None): {"type": "null"},
    Any: {},
}


def _type_schema(hint: Any, where: str) -> dict[str, Any]:
    if hint in _SIMPLE:
        return dict(_SIMPLE[hint])
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        inner = _type_schema(args[0], where)
        notes = [a for a in args[1:] if isinstance(a, str)]
        if notes:
            inner["description"] = " ".join(notes)
        return inner
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        parts = [_type_schema(a, where) for a in args]
        simple = [p.get("type") for p in parts]
        if all(isinstance(t, str) for t in simple) and all(len(p) == 1 for p in parts):
            return {"type": simple}
        return {"anyOf": parts}
    if origin in (list, tuple, set, frozenset, Sequence, Iterable):
        schema: dict[str, Any] = {"type": "array"}
        if args and args[-1] is not Ellipsis:
            schema["items"] = _type_schema(args[0], where)
        return schema
    if origin is dict or origin is typing.Mapping:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = _type_schema(args[1], where)
        return schema
    raise TypeError(
        f"cannot derive a JSON Schema for {where} (type {hint!r}): use str, int, float, "
        "bool, Literal, list[...], dict[...] or X | None, or pass parameters= explicitly"
    )


def schema_from_signature(fn: Callable[..., Any]) -> dict[str, Any]:
    """JSON Schema for a tool function's arguments: every parameter after the first
    (the workspace)."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as e:
        raise TypeError(f"cannot resolve the type hints of {fn.__name__}: {e}") from None
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(
            f"tool function {fn.__name__} must take the workspace as its first argument"
        )
    properties: dict[str, Any] = {}
    required: list[str] = []
    extra = False
    for p in params[1:]:
        where = f"parameter {p.name!r} of {fn.__name__}"
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            extra = True
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise TypeError(f"{where}: tool arguments are passed by keyword")
        prop = _type_schema(hints[p.name], where) if p.name in hints else {}
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        elif p.default is None or isinstance(p.default, str | int | float | bool):
            prop["default"] = p.default
        properties[p.name] = prop
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": extra,
    }
    if required:
        schema["required"] = required
    return schema
