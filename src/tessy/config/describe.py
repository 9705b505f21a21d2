"""Every setting of a run config in words: what ``tessy config schema`` prints."""

from __future__ import annotations

import dataclasses
import enum
import json
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from .schema import SynthConfig

__all__ = ["FieldDoc", "describe_config"]


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One setting as ``tessy config schema`` prints it."""

    key: str  # dotted, e.g. ``teacher.sampling.top_p``
    type: str
    default: str  # ``(required)`` where there is none
    description: str
    only_for: str = ""  # e.g. ``backend: openai`` for a field of one backend only
    hashed: bool = True  # whether it changes the data (and so the config hash)


def describe_config() -> list[FieldDoc]:
    """Every setting of a run config with its type, default and description, in file order.

    Roles list the fields every backend has, then each backend's own; predictors likewise. The
    teacher's and the student's sections take the same settings, shown once as ``ROLE.``."""
    rows = _describe(SynthConfig, "")
    out: list[FieldDoc] = []
    for row in rows:
        if row.key.startswith("student."):
            continue
        if row.key.startswith("teacher."):
            row = dataclasses.replace(row, key="ROLE." + row.key.removeprefix("teacher."))
        out.append(row)
    return out


def _type_name(annotation: Any) -> str:
    if annotation is None or annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(str(m.value) for m in annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in get_args(annotation))
    if origin is Annotated:
        return _type_name(get_args(annotation)[0])
    if origin in (types.UnionType, Union):
        return " | ".join(_type_name(a) for a in get_args(annotation))
    if origin is not None:
        args = [_type_name(a) for a in get_args(annotation) if a is not Ellipsis]
        name = "list" if origin is tuple else getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(args)}]" if args else name
    if isinstance(annotation, type):
        return {"Path": "path"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _default_text(info: Any) -> str:
    from pydantic_core import PydanticUndefined

    if info.default_factory is not None:
        value = info.default_factory()
        return "{}" if isinstance(value, (dict, BaseModel)) else json.dumps(value, default=str)
    if info.default is PydanticUndefined:
        return "(required)"
    value = info.default
    if isinstance(value, enum.Enum):
        value = value.value
    return json.dumps(value, default=str)


def _union_members(annotation: Any) -> tuple[type[BaseModel], ...] | None:
    """The models of a tagged union (a role or a predictor), or None for any other type."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    members = get_args(annotation) if get_origin(annotation) in (types.UnionType, Union) else ()
    models = tuple(m for m in members if isinstance(m, type) and issubclass(m, BaseModel))
    return models if len(models) > 1 and len(models) == len(members) else None


def _describe(
    model: type[BaseModel],
    prefix: str,
    only_for: str = "",
    skip: frozenset[str] = frozenset(),
    hashed_above: bool = True,
) -> list[FieldDoc]:
    out: list[FieldDoc] = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        key = f"{prefix}{name}"
        annotation = info.annotation
        extra = info.json_schema_extra
        when_set = isinstance(extra, dict) and extra.get("hashed") == "when set"
        hashed = (hashed_above or when_set) and not (isinstance(extra, dict) and extra.get("hashed") is False)
        members = _union_members(annotation)
        if members is not None:
            out += _describe_union(members, key, only_for)
            continue
        optional = [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) in (types.UnionType, Union) and len(optional) == 1:
            annotation = optional[0]  # an optional section (``verify:``) lists its fields too
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.append(
                FieldDoc(
                    key, "section", "", info.description or (annotation.__doc__ or "").split("\n")[0], only_for, hashed
                )
            )
            out += _describe(annotation, f"{key}.", only_for, hashed_above=hashed)
            continue
        out.append(FieldDoc(key, _type_name(annotation), _default_text(info), info.description or "", only_for, hashed))
    return out


def _describe_union(members: tuple[type[BaseModel], ...], key: str, only_for: str) -> list[FieldDoc]:
    tag = "backend" if "backend" in members[0].model_fields else "type"
    common = set.intersection(*(set(m.model_fields) for m in members)) - {tag}
    tags = [str(get_args(m.model_fields[tag].annotation)[0]) for m in members]
    out = [
        FieldDoc(
            f"{key}.{tag}",
            " | ".join(tags),
            "(required)" if tag == "backend" else '"lexicon"',
            f"Which {tag} this is.",
            only_for,
        )
    ]
    first = members[0]
    out += _describe(first, f"{key}.", only_for, skip=frozenset(set(first.model_fields) - common))
    for model, value in zip(members, tags, strict=True):
        out += _describe(model, f"{key}.", f"{tag}: {value}", skip=frozenset(common | {tag}))
    return out
