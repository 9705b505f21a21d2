"""The config hash: a digest of every setting that changes the data.

A field whose ``json_schema_extra`` says ``{"hashed": False}`` is left out, and one that says
``{"hashed": "when set"}`` is left out while it is ``None`` (even inside a section left out, such
as ``data``, whose ``preset`` changes the prompts); a path is hashed by
its file's (or folder's) content, not its location, so a moved predictor checkpoint hashes the
same and a retrained one not.
"""

from __future__ import annotations

import enum
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

__all__ = ["config_hash"]


def config_hash(model: BaseModel) -> str:
    """A short hash of everything in ``model`` that changes the data."""
    payload = json.dumps(_hashed(model), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _hashed(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra
        value = getattr(model, name)
        if isinstance(extra, dict) and extra.get("hashed") is False:
            # A section left out of the hash may still hold fields that change the data when set.
            inner = _set_when_set(value) if isinstance(value, BaseModel) else {}
            if inner:
                out[name] = inner
            continue
        if value is None and isinstance(extra, dict) and extra.get("hashed") == "when set":
            continue  # a field added later: unset, it leaves older configs' hashes as they were
        if isinstance(value, BaseModel):
            out[name] = _hashed(value)
        elif isinstance(value, Path):
            # A file's content changes the data, its location does not.
            out[name] = _file_digest(value)
        else:
            out[name] = value.value if isinstance(value, enum.Enum) else value
    return out


def _set_when_set(model: BaseModel) -> dict[str, Any]:
    """The fields of ``model`` marked ``{"hashed": "when set"}`` that are set."""
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra
        value = getattr(model, name)
        if isinstance(extra, dict) and extra.get("hashed") == "when set" and value is not None:
            out[name] = value.value if isinstance(value, enum.Enum) else value
    return out


def _file_digest(path: Path) -> str:
    try:
        if path.is_dir():
            return "sha256:" + _folder_digest(path)
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return str(path)


#: Files of a folder up to this size are hashed by content, larger ones (weights) by name and size.
_SMALL_FILE = 1 << 20


def _folder_digest(path: Path) -> str:
    """A digest of a folder (a predictor checkpoint): names, sizes, and the content of small files
    (configs, the training card), so that a moved checkpoint hashes the same and a retrained one not."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}\0{size}\0".encode())
        if size <= _SMALL_FILE:
            digest.update(file.read_bytes())
    return digest.hexdigest()
