"""Loading a run config: a YAML file, a YAML path given as text, or a dict; then ``key=value``
overrides; then validation, with errors located as the user wrote the config."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .schema import PredictorConfig, RoleConfig, SynthConfig

__all__ = ["apply_overrides", "load_config", "validate_config"]


def apply_overrides(data: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Set overrides in a nested dict, in place: ``"a.b.c=value"`` strings (values parsed as
    YAML, as on the command line) or a mapping of dotted keys to values (taken as they are)."""
    items: list[tuple[str, Any, str]] = []
    if isinstance(overrides, Mapping):
        items = [(str(key), value, f"{key}={value!r}") for key, value in overrides.items()]
    else:
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {item!r} is not of the form key=value (e.g. teacher.chunk_tokens=32)")
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as exc:
                raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from exc
            items.append((key, value, item))
    for key, value, item in items:
        node = data
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: {key!r} is not a dotted key such as teacher.chunk_tokens")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(
    source: Path | str | Mapping[str, Any] | SynthConfig | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    data: Mapping[str, Any] | None = None,
    base_dir: Path | str | None = None,
) -> SynthConfig:
    """A validated run config from a YAML file (a :class:`~pathlib.Path` or a path as text), a
    dict of settings, or another config, with ``overrides`` applied.

    ``overrides`` are ``"key=value"`` strings as on the command line (``"teacher.chunk_tokens=32"``)
    or a mapping of dotted keys to values (``{"teacher.chunk_tokens": 32}``). Paths in a file are
    relative to the file; paths in a dict to ``base_dir`` (default: left as they are, so relative
    to the working directory when used).
    """
    if data is not None:  # the keyword form of a dict source
        if source is not None:
            raise ConfigError("give the config as a file or as data, not both")
        source = data
    where = "the config"
    folder = Path(base_dir) if base_dir is not None else None
    if isinstance(source, SynthConfig):
        settings: dict[str, Any] = source.dump()
    elif isinstance(source, Mapping):
        settings = copy.deepcopy(dict(source))
    elif source is None:
        settings = {}
    else:
        path = Path(source).expanduser()
        settings = _read_yaml(path)
        folder, where = path.resolve().parent, str(path)
    return validate_config(apply_overrides(settings, overrides or []), base_dir=folder, source=where)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"cannot read the config file {path}: it does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(loaded).__name__}")
    return loaded


def validate_config(data: dict[str, Any], *, base_dir: Path | None = None, source: str = "the config") -> SynthConfig:
    try:
        return SynthConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc, msg = _readable(err)
            where = ".".join(str(p) for p in loc) or "(top level)"
            lines.append(f"  {where}: {msg}")
        raise ConfigError(f"{source} is not valid:\n" + "\n".join(lines)) from None


def _union_tags() -> frozenset[str]:
    """The discriminator values of the config's tagged unions (backends, predictor types)."""
    tags: set[str] = set()
    for union in (RoleConfig, PredictorConfig):
        inner = get_args(union)[0]
        for member in get_args(inner) or (inner,):
            for name in ("backend", "type"):
                field = getattr(member, "model_fields", {}).get(name)
                if field is not None:
                    tags.update(str(v) for v in get_args(field.annotation))
    return frozenset(tags)


def _readable(err: Any) -> tuple[tuple[Any, ...], str]:
    """An error's location and message as a user writes the config: the union tag that pydantic
    puts in the location of a role's (or predictor's) fields is left out, and a bad tag is named."""
    loc = tuple(err["loc"])
    tags = _union_tags()
    parents = ("teacher", "student", "predictor")
    cleaned = tuple(p for i, p in enumerate(loc) if not (i and loc[i - 1] in parents and p in tags))
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx") or {}
        key = str(ctx.get("discriminator", "backend")).strip("'")
        given = ctx.get("tag")
        what = f"unknown {key} {given!r}" if given else f"say which {key} this is"
        return (*cleaned, key), f"{what}; choose one of: {ctx.get('expected_tags', '')}"
    return cleaned, str(err["msg"])
