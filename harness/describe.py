"""Parameter tables for ``flowgauge list params NAME``: every field of a registered
entry's pydantic ``Params`` model with its type, default and description, nested models
(a coupling, a path) expanded under their field, one alternative after another.

A description is the field's ``Field(description=...)``, else the comment on the line
that declares it in the source: the models stay the single place where parameters are
documented.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def _comments(model: type) -> dict[str, str]:
    """Field name -> the comment on its declaring line, over the model's classes."""
    out: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        for match in re.finditer(r"^\s+(\w+)\s*:[^\n#]*#\s*(.+)$", source, re.MULTILINE):
            if not match.group(2).startswith(("type:", "noqa")):
                out[match.group(1)] = match.group(2).strip()
    return out


def _number(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:_}".replace("_", " ") if abs(value) >= 10_000 else str(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(metadata: list[Any]) -> str:
    parts: list[str] = []
    for item in metadata:
        for attr, symbol in _BOUNDS:
            value = getattr(item, attr, None)
            if value is not None and f"{symbol} {_number(value)}" not in parts:
                parts.append(f"{symbol} {_number(value)}")
    return " " + ", ".join(parts) if parts else ""


def _alternatives(annotation: Any) -> list[type[BaseModel]]:
    """The models of a field typed as one model or a union of models (a named union)."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return []


def _tag(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("name")
    if field is not None and get_origin(field.annotation) is Literal:
        return str(get_args(field.annotation)[0])
    return None


def type_text(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A short reading of a field's type: ``int ≥ 1, ≤ 65536``, ``'a' | 'b'``, ``one of ...``."""
    metadata = list(metadata or [])
    if get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        metadata += [m for e in extra for m in ([e] + list(getattr(e, "metadata", []) or []))]
    models = _alternatives(annotation)
    if models and len(models) > 1:
        return "one of " + ", ".join(_tag(m) or m.__name__ for m in models)
    if models:
        return _tag(models[0]) or models[0].__name__
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(type_text(a) for a in rest)
        return text + (" or null" if len(rest) < len(args) else "") + _bounds(metadata)
    if origin in (tuple, list):
        inner = ", ".join(type_text(a) for a in args if a is not Ellipsis)
        return f"[{inner}{', ...' if Ellipsis in args or origin is list else ''}]"
    name = getattr(annotation, "__name__", str(annotation).replace("typing.", ""))
    return {"float": "number", "int": "integer", "bool": "true/false", "str": "string"}.get(name, name) + _bounds(
        metadata)


def _default(field: Any) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        tag = _tag(type(value))
        return tag if tag is not None else json.dumps(value.model_dump(mode="json"))
    return value if isinstance(value, str) else json.dumps(value, default=str)


def parameter_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every field of ``model``, nested ones below."""
    hints = typing.get_type_hints(model, include_extras=True)
    comments = _comments(model)
    rows = []
    for name, field in model.model_fields.items():
        if name == "name" and _tag(model) is not None:
            continue  # the tag that selects this alternative: shown in its parent's row
        annotation = hints.get(name, field.annotation)
        key = f"{prefix}{name}"
        rows.append((key, type_text(annotation, field.metadata), _default(field),
                     field.description or comments.get(name, "")))
        alternatives = _alternatives(annotation)
        for alternative in alternatives:
            tag = _tag(alternative)
            below = f"{key}[{tag}]." if len(alternatives) > 1 and tag else f"{key}."
            rows += parameter_rows(alternative, below)
    return rows
