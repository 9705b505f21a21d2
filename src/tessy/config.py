"""Run configuration: validated, frozen pydantic models loaded from YAML plus ``key=value`` overrides.

Paths written in a config file are relative to that file. Fields that do not change the data
(where files live, how many requests run at once) are left out of the config hash, so a run can
be resumed with other paths or concurrency but not with another model, mode or budget.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from .engine import Mode
from .errors import ConfigError

__all__ = [
    "ClassifierPredictorConfig",
    "DataConfig",
    "GuardsConfig",
    "LexiconPredictorConfig",
    "PredictorConfig",
    "RoleConfig",
    "SamplingConfig",
    "ScriptedRole",
    "SynthConfig",
    "apply_overrides",
    "load_config",
]

#: Marks a field that does not change the synthesised data; it is left out of the config hash.
NOT_HASHED: dict[str, Any] = {"hashed": False}


def _resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    if value is None or value.is_absolute() or base is None:
        return value
    return Path(base) / value


#: A path that, written in a config file, is relative to that file.
ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingConfig(_Model):
    """Sampling parameters (OpenAI / vLLM names). Defaults follow the paper."""

    temperature: float = Field(0.7, ge=0, description="Sampling temperature.")
    top_p: float = Field(0.8, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(20, ge=-1, description="Top-k sampling; -1 or 0 turns it off.")
    min_p: float | None = Field(None, ge=0, le=1, description="Min-p sampling, where the server has it.")
    repetition_penalty: float | None = Field(None, gt=0, description="Repetition penalty, where the server has it.")
    seed: int | None = Field(None, description="Sampling seed, for servers that honour one.")


class LexiconPredictorConfig(_Model):
    """The default predictor: style phrases from a word list (see ``tessy.boundary.lexicon``)."""

    type: Literal["lexicon"] = "lexicon"
    phrases: tuple[str, ...] = Field((), description="Phrases added to the default list.")
    phrases_file: ConfigPath | None = Field(None, description="A file of phrases, one a line.")
    replace_defaults: bool = Field(False, description="Use only the given phrases, not the defaults.")


class ClassifierPredictorConfig(_Model):
    """A trained token classifier (see ``tessy.boundary.classifier`` and ``tessy predictor train``)."""

    type: Literal["classifier"]
    path: ConfigPath = Field(description="Checkpoint folder: a Hugging Face token-classification model and tokenizer.")
    window: int = Field(200, ge=2, description="Tokens of left context the classifier reads (left-truncated).")
    threshold: float = Field(0.5, gt=0, lt=1, description="Style probability at or above which a token is style.")
    reuse: bool = Field(
        True, description="Keep a causal backbone's key/values of the context between chunks instead of re-encoding."
    )
    reuse_margin: int = Field(
        100, ge=0, description="Tokens a reused window may grow past `window` before it is re-encoded."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where the classifier runs; auto picks cuda when a GPU is visible.",
        json_schema_extra=NOT_HASHED,
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights dtype; auto: float32 on cpu, bfloat16 (or float16) on cuda.",
        json_schema_extra=NOT_HASHED,
    )
    max_batch: int = Field(32, ge=1, description="Queries per batched forward.", json_schema_extra=NOT_HASHED)
    max_wait_ms: float = Field(
        5.0, ge=0, description="How long a query waits for others to fill a batch.", json_schema_extra=NOT_HASHED
    )
    max_states: int = Field(
        1024, ge=1, description="Samples whose encoded context is kept for reuse.", json_schema_extra=NOT_HASHED
    )


def _predictor_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        return {"type": value}
    if isinstance(value, dict) and "type" not in value:
        return {**value, "type": "lexicon"}  # the default predictor, written as a mapping
    return value


PredictorConfig = Annotated[
    LexiconPredictorConfig | ClassifierPredictorConfig,
    Field(discriminator="type"),
    BeforeValidator(_predictor_shorthand),
]


class RoleBase(_Model):
    """What every role has, whatever its backend."""

    format: str = Field("qwen3", description="Chat format name (see `tessy.formats.format_names()`).")
    system_prompt: str | None = Field(None, description="System message added when the input has none.")
    chunk_tokens: int = Field(20, ge=1, description="k: tokens a role writes before its predictor looks.")
    predictor: PredictorConfig = Field(default_factory=LexiconPredictorConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    max_concurrency: int = Field(
        64, ge=1, description="Requests in flight on this role's backend.", json_schema_extra=NOT_HASHED
    )


class ScriptedRole(RoleBase):
    """A scripted fake model: each sample walks through ``responses`` (for examples and tests)."""

    backend: Literal["scripted"]
    responses: tuple[str, ...] = Field(min_length=1, description="Thinking continuations, cycled per sample.")
    answers: tuple[str, ...] = Field((), description="Answer continuations (default: the responses).")
    latency_s: float = Field(0.0, ge=0, description="Simulated seconds a request takes.", json_schema_extra=NOT_HASHED)


RoleConfig = ScriptedRole


class GuardsConfig(_Model):
    """Budgets and guards; each one that fires is recorded with the sample."""

    max_total_tokens: int = Field(32768, ge=2, description="Tokens in thinking plus answer.")
    max_thinking_tokens: int = Field(
        28672, ge=1, description="Thinking tokens; then thinking is closed and the answer written."
    )
    max_request_failures: int = Field(3, ge=0, description="Failed requests a sample may survive.")
    word_completion_tokens: int = Field(8, ge=1, description="Tokens asked for to finish a word cut at a chunk's end.")
    repetition: bool = Field(True, description="Fail samples that fall into degenerate repetition.")
    repetition_min_tokens: int = Field(128, ge=2, description="Fewest repeated tokens that count as degenerate.")
    repetition_max_period: int = Field(256, ge=1, description="Longest repeated unit looked for, in tokens.")
    repetition_min_repeats: int = Field(3, ge=2, description="Fewest repeats of the unit that count as degenerate.")

    @model_validator(mode="after")
    def _budgets(self) -> GuardsConfig:
        if self.max_thinking_tokens >= self.max_total_tokens:
            raise ValueError(
                f"max_thinking_tokens ({self.max_thinking_tokens}) must be below "
                f"max_total_tokens ({self.max_total_tokens}) to leave room for the answer"
            )
        return self


class DataConfig(_Model):
    """Where prompts come from and where records go; none of it changes the data."""

    input: ConfigPath | None = Field(None, description="JSONL prompts.")
    output: ConfigPath | None = Field(None, description="JSONL records (append-only).")
    prompt_field: str | None = Field(
        None, description="Field holding the prompt (text or chat messages); default: 'messages', else 'prompt'."
    )
    id_field: str = Field("id", description="Field holding the sample id; without it the prompt's hash is the id.")
    strict: bool = Field(
        False, description="Stop at the first malformed input line instead of recording it and going on."
    )
    retry_failed: bool = Field(False, description="Run again the samples that failed in an earlier run.")
    allow_config_change: bool = Field(False, description="Append to an output made with another config.")
    fsync: bool = Field(False, description="fsync after every record (survives power loss, costs speed).")


class SynthConfig(_Model):
    """A whole synthesis run."""

    mode: Mode = Field(Mode.TESSY, description="Who writes the thinking and who the answer.")
    streaming: bool = Field(False, description="Stream tokens and stop each request at the first boundary.")
    teacher: RoleConfig
    student: RoleConfig
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    data: DataConfig = Field(default_factory=DataConfig, json_schema_extra=NOT_HASHED)
    max_in_flight: int = Field(256, ge=1, description="Samples in progress at once.", json_schema_extra=NOT_HASHED)
    limit: int | None = Field(
        None, ge=1, description="Use only the first N prompts of the input.", json_schema_extra=NOT_HASHED
    )

    def config_hash(self) -> str:
        """A short hash of everything that changes the data."""
        payload = json.dumps(_hashed(self), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _hashed(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("hashed") is False:
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out[name] = _hashed(value)
        elif isinstance(value, Path):
            # A file's content changes the data, its location does not.
            out[name] = _file_digest(value)
        else:
            out[name] = value.value if isinstance(value, Mode) else value
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


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` overrides (values parsed as YAML) in a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. teacher.chunk_tokens=32)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from exc
        node = data
        parts = key.strip().split(".")
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
    path: Path | None = None, overrides: list[str] | None = None, *, data: dict[str, Any] | None = None
) -> SynthConfig:
    """Load and validate a config from a YAML file (or a dict), then apply overrides."""
    base_dir: Path | None = None
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of settings, not {type(loaded).__name__}")
        data = loaded
        base_dir = path.resolve().parent
    data = apply_overrides(copy.deepcopy(data or {}), overrides or [])
    return validate_config(data, base_dir=base_dir, source=str(path) if path else "the config")


def _readable_loc(loc: tuple[int | str, ...]) -> list[str]:
    """An error location without the union tags pydantic inserts (``predictor.lexicon.x`` -> ``predictor.x``)."""
    out: list[str] = []
    for part in loc:
        if out and out[-1] == "predictor" and part in _PREDICTOR_TYPES:
            continue
        out.append(str(part))
    return out


_PREDICTOR_TYPES = ("lexicon", "classifier")


def validate_config(data: dict[str, Any], *, base_dir: Path | None = None, source: str = "the config") -> SynthConfig:
    try:
        return SynthConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(_readable_loc(err["loc"])) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError(f"{source} is not valid:\n" + "\n".join(lines)) from None
