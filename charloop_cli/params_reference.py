"""The params reference, generated from the pydantic schema so it cannot drift from it.

``charloop params-reference`` writes it to ``docs/params.md``; a test compares that page
with a fresh rendering and checks every field of the schema is listed.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HEADER = """# params.yaml reference

Generated from charloop's pydantic schema (`charloop/params/`) by
`charloop params-reference`; a test fails when this page and the schema differ. Every
section rejects unknown keys. `[]` marks a list's items; `{type: ...}` a variant of a
discriminated union (the `type` or `policy` key chooses it).
"""


@dataclass(frozen=True)
class FieldDoc:
    """One documented field: its dotted path, type, default and description."""

    path: str
    type: str
    default: str
    description: str


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models an annotation holds (through Optional, lists, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found += _models_in(arg)
    return found


def type_name(annotation: Any) -> str:
    """A short readable name of a field's type."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return type_name(get_args(annotation)[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(annotation))
    if origin in (list, tuple, set, dict):
        inner = ", ".join(type_name(a) for a in get_args(annotation) if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else "(built)"
    value = field.default
    if isinstance(value, BaseModel):
        return "(section defaults)"
    text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else "(see the items below)"


def _variant_label(model: type[BaseModel]) -> str:
    """``{type: x}`` for a discriminated-union variant (its literal tag), else ''."""
    for key in ("type", "policy"):
        field = model.model_fields.get(key)
        if field is not None and get_origin(field.annotation) is Literal:
            return "{" + f"{key}: {get_args(field.annotation)[0]}" + "}"
    return ""


def field_docs(model: type[BaseModel], prefix: str = "") -> list[FieldDoc]:
    """Every field of ``model`` and of the models nested in it, depth first."""
    docs: list[FieldDoc] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _models_in(field.annotation)
        text = field.description or (_summary(nested[0]) if len(nested) == 1 else "")
        description = " ".join(text.split())
        docs.append(FieldDoc(path, type_name(field.annotation), _default(field), description))
        is_list = get_origin(field.annotation) is list or "list[" in type_name(field.annotation)
        for sub in dict.fromkeys(nested):
            label = _variant_label(sub) if len(nested) > 1 else ""
            child = f"{path}[]" if is_list else path
            docs += field_docs(sub, f"{child}{' ' + label if label else ''}.")
    return docs


def _summary(model: type[BaseModel]) -> str:
    """The first paragraph of a section model's docstring."""
    return (model.__doc__ or "").strip().split("\n\n")[0]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown(model: type[BaseModel] | None = None) -> str:
    """The whole reference page: one table per top-level section."""
    from charloop.params.schema import Params

    root = model or Params
    parts = [HEADER]
    for doc in field_docs(root):
        if "." not in doc.path:
            parts.append(f"\n## `{doc.path}`\n\n{doc.description or ''}\n")
            parts.append("| field | type | default | what it does |\n|---|---|---|---|")
            parts.append(f"| `{doc.path}` | {_cell(doc.type)} | {_cell(doc.default)} | |")
            continue
        parts.append(
            f"| `{_cell(doc.path)}` | {_cell(doc.type)} | {_cell(doc.default)} | "
            f"{_cell(doc.description)} |"
        )
    return "\n".join(parts) + "\n"
