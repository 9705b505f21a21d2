"""The run config's schema: validated, frozen pydantic models, every field documented.

Paths written in a config file are relative to that file. Fields that do not change the data
(where files live, how many requests run at once) are marked ``NOT_HASHED`` and left out of the
config hash, so a run can be resumed with other paths or concurrency but not with another model,
mode or budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from ..errors import ConfigError
from ..prompts import PromptSource
from ..records import Mode
from .hashing import config_hash
from .verify import VerifyConfig

__all__ = [
    "NOT_HASHED",
    "ClassifierPredictorConfig",
    "ConfigPath",
    "DataConfig",
    "GuardsConfig",
    "HFRole",
    "LexiconPredictorConfig",
    "LlamaCppRole",
    "MethodsConfig",
    "ModelRef",
    "OpenAIRole",
    "PredictorConfig",
    "RoleBase",
    "RoleConfig",
    "SamplingConfig",
    "ScriptedRole",
    "SynthConfig",
    "VerifyConfig",
]

#: Marks a field that does not change the synthesised data; it is left out of the config hash.
NOT_HASHED: dict[str, Any] = {"hashed": False}
#: Marks a field added after outputs were made: left out of the hash while unset (``None``), so
#: configs written before it keep their hash.
HASHED_WHEN_SET: dict[str, Any] = {"hashed": "when set"}


def _resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    if value is None or value.is_absolute() or base is None:
        return value
    return Path(base) / value


#: A path that, written in a config file, is relative to that file.
ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


def _resolve_model_ref(value: str | None, info: ValidationInfo) -> str | None:
    """A model or tokenizer reference: a catalogued name stays as it is; a relative path that
    exists beside the config file is made absolute."""
    from ..models import CATALOGUE

    base = (info.context or {}).get("base_dir")
    if value is None or value in CATALOGUE or base is None or Path(value).expanduser().is_absolute():
        return value
    candidate = Path(base) / value
    return str(candidate) if candidate.exists() else value


#: A Hugging Face folder, a GGUF file or a catalogued model name (paths relative to the config file).
ModelRef = Annotated[str, AfterValidator(_resolve_model_ref)]


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
    lookahead: int | None = Field(
        None,
        ge=0,
        description="Tokens a streamed cut waits for past its next token; unset: the lexicon's own "
        "(enough to finish its longest phrase, less where no phrase can be under way). "
        "A sensitivity knob (`tessy bench --lookahead`).",
        json_schema_extra=HASHED_WHEN_SET,
    )


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
    format_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the format, e.g. {reasoning_effort: high} for gpt-oss (see `tessy.formats`).",
    )
    tokenizer: ModelRef | None = Field(
        None,
        description="The model's tokenizer (a Hugging Face folder, a GGUF file or a catalogued model name): "
        "prompts are then kept as token ids where the backend takes them, and the chatml and template "
        "formats render through the model's chat template. The hf backend uses its model's by default.",
    )
    system_prompt: str | None = Field(None, description="System message added when the input has none.")
    chunk_tokens: int = Field(20, ge=1, description="k: tokens a role writes before its predictor looks.")
    stream_tokens: int | None = Field(
        None,
        ge=2,
        description="With streaming: the most tokens one stream asks for. A stream that reaches it with no "
        "boundary keeps its settled text and the role streams on, so a stream the client stops late wastes at "
        "most this many tokens. Default: 4 x chunk_tokens.",
        json_schema_extra=HASHED_WHEN_SET,
    )
    predictor: PredictorConfig = Field(default_factory=LexiconPredictorConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    max_concurrency: int = Field(
        64, ge=1, description="Requests in flight on this role's backend.", json_schema_extra=NOT_HASHED
    )

    @model_validator(mode="after")
    def _known_format(self) -> RoleBase:
        from ..formats import check_format_options

        try:
            check_format_options(self.format, self.format_options)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class ScriptedRole(RoleBase):
    """A scripted fake model: each sample walks through ``responses`` (for examples and tests)."""

    backend: Literal["scripted"]
    responses: tuple[str, ...] = Field(min_length=1, description="Thinking continuations, cycled per sample.")
    answers: tuple[str, ...] = Field((), description="Answer continuations (default: the responses).")
    latency_s: float = Field(0.0, ge=0, description="Simulated seconds a request takes.", json_schema_extra=NOT_HASHED)


class OpenAIRole(RoleBase):
    """A model behind OpenAI-compatible servers (vLLM, SGLang, llama.cpp), one or more replicas.

    ``max_concurrency`` is per replica here.
    """

    backend: Literal["openai"]
    model: str = Field(description="The model name the servers serve (the request's `model`).")
    endpoints: tuple[str, ...] = Field(
        min_length=1,
        description="Base URLs of the replicas, each ending in /v1 (e.g. http://gpu1:8000/v1).",
        json_schema_extra=NOT_HASHED,
    )
    server: Literal["vllm", "sglang", "llamacpp", "openai"] = Field(
        "vllm", description="What the servers are: decides token-id prompts, returned ids and extra fields."
    )
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key (never logged).", json_schema_extra=NOT_HASHED
    )
    timeout_s: float = Field(300.0, gt=0, description="Seconds a request may take.", json_schema_extra=NOT_HASHED)
    connect_timeout_s: float = Field(10.0, gt=0, description="Seconds to connect.", json_schema_extra=NOT_HASHED)
    max_retries: int = Field(
        4, ge=0, description="Tries again after connection errors, timeouts, 5xx, 429.", json_schema_extra=NOT_HASHED
    )
    backoff_s: float = Field(
        0.5, ge=0, description="First backoff (doubles, with jitter).", json_schema_extra=NOT_HASHED
    )
    outage_timeout_s: float = Field(
        600.0,
        gt=0,
        description="When every replica fails, requests wait (samples are not failed) while a health probe "
        "(GET /v1/models) asks until one answers; past this many seconds the run ends with an error, "
        "the records written kept.",
        json_schema_extra=NOT_HASHED,
    )
    logprobs: bool = Field(True, description="Ask for per-token text (token boundaries for the predictors).")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Extra request fields passed as they are.")


class LlamaCppRole(RoleBase):
    """A GGUF model served by a local llama.cpp server that tessy starts and stops."""

    backend: Literal["llamacpp"]
    model: str = Field(description="A GGUF path or a catalogued model name (see `tessy models list`).")
    n_ctx: int = Field(8192, ge=256, description="Context tokens, shared by the parallel slots.")
    n_parallel: int = Field(4, ge=1, description="Parallel slots (requests served at once).")
    n_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads (default: half the cores when a run starts two local servers; all of "
        "them for commands that run one model, such as `tessy predictor sample`).",
        json_schema_extra=NOT_HASHED,
    )
    timeout_s: float = Field(300.0, gt=0, description="Seconds a request may take.", json_schema_extra=NOT_HASHED)
    startup_timeout_s: float = Field(
        180.0, gt=0, description="Seconds the server may take to start.", json_schema_extra=NOT_HASHED
    )


class HFRole(RoleBase):
    """A Hugging Face transformers model run in this process (``backend: hf``).

    GGUF files are dequantised to float32 on load (converted once, then cached); prompts are
    kept as token ids and each sample's KV cache is reused from one request to the next.
    """

    backend: Literal["hf"]
    model: ModelRef = Field(
        description="A Hugging Face model folder or Hub id, a .gguf file or a catalogued model name."
    )
    device: str = Field(
        "auto", description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.", json_schema_extra=NOT_HASHED
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights' dtype: auto is float32 on CPU, bfloat16 (or float16) on CUDA."
    )
    max_batch_size: int = Field(
        8, ge=1, description="Requests decoded together in one batch.", json_schema_extra=NOT_HASHED
    )
    cache_tokens: int = Field(
        32768,
        ge=0,
        description="Tokens of KV cache kept for samples between their requests (least recently used go first).",
        json_schema_extra=NOT_HASHED,
    )


RoleConfig = Annotated[ScriptedRole | OpenAIRole | LlamaCppRole | HFRole, Field(discriminator="backend")]


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


class MethodsConfig(_Model):
    """Parameters of the comparison methods (``mode:`` teacher-score, teacher-reference,
    teacher-mix, rsd, student-select); the other modes ignore them."""

    candidates: int = Field(5, ge=1, description="teacher-score, student-select: candidates written per sample.")
    score_prompt: ConfigPath | None = Field(
        None,
        description="teacher-score: the prompt file the teacher grades a candidate with ({question}, {thinking}, "
        "{answer}; the last 'Score: N' it writes is read). Default: tessy's own (the paper did not publish its).",
    )
    score_max_tokens: int = Field(1024, ge=1, description="teacher-score: tokens the teacher may write to grade.")
    reference_prompt: ConfigPath | None = Field(
        None,
        description="teacher-reference: the prompt file the student writes with ({question}, {reference}: the "
        "teacher's answer). Default: tessy's own (the paper did not publish its).",
    )
    rsd_threshold: float = Field(
        0.1,
        gt=0,
        le=1,
        description="rsd: a teacher token is kept when the student's probability of it is at least this.",
    )
    rsd_propose_tokens: int = Field(
        16, ge=1, description="rsd: teacher tokens proposed, and scored by the student in one request, at a time."
    )
    mix_teacher_share: float = Field(
        0.5, ge=0, le=1, description="teacher-mix: the share of samples (chosen by id) that are teacher-only."
    )


class DataConfig(_Model):
    """Where prompts come from and where records go; none of it changes the data but ``preset``
    and ``fields`` (hashed when set: a preset writes the prompts)."""

    input: ConfigPath | None = Field(
        None,
        description="Prompts: a JSONL or Parquet file, or a dataset folder (save_to_disk, or data files).",
    )
    dataset: str | None = Field(
        None, description="Prompts from a Hugging Face Hub dataset instead (e.g. open-r1/codeforces), streamed."
    )
    split: str = Field("train", description="The split of a dataset folder or Hub dataset.")
    subset: str | None = Field(None, description="The configuration (subset) of a dataset folder or Hub dataset.")
    output: ConfigPath | None = Field(None, description="JSONL records (append-only).")
    prompt_field: str | None = Field(
        None, description="Field holding the prompt (text or chat messages); default: 'messages', else 'prompt'."
    )
    id_field: str = Field("id", description="Field holding the sample id; without it the prompt's hash is the id.")
    preset: Literal["gsm8k", "math", "humaneval", "mbpp", "livecodebench"] | None = Field(
        None,
        description="Read a benchmark source's rows: the prompt, and the fields verifiers check "
        "(answer; test and entry_point; inputs and outputs) at the top level of each record.",
        json_schema_extra=HASHED_WHEN_SET,
    )
    fields: dict[str, str] | None = Field(
        None,
        description="Input fields renamed after the preset: {record field: source field}, e.g. {answer: label}.",
        json_schema_extra=HASHED_WHEN_SET,
    )
    strict: bool = Field(
        False, description="Stop at the first malformed input line instead of recording it and going on."
    )
    retry_failed: bool = Field(False, description="Run again the samples that failed in an earlier run.")
    allow_config_change: bool = Field(False, description="Append to an output made with another config.")
    fsync: bool = Field(False, description="fsync after every record (survives power loss, costs speed).")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.input is not None and self.dataset is not None:
            raise ValueError(
                f"data.input ({self.input}) and data.dataset ({self.dataset}) are both set; "
                "prompts come from one of them"
            )
        return self

    def source(self) -> PromptSource | None:
        """Where the prompts come from, or None when neither data.input nor data.dataset is set."""
        fields = tuple((self.fields or {}).items())
        if self.dataset is not None:
            return PromptSource(self.dataset, self.split, self.subset, hub=True, preset=self.preset, fields=fields)
        if self.input is not None:
            return PromptSource(str(self.input), self.split, self.subset, preset=self.preset, fields=fields)
        return None


class SynthConfig(_Model):
    """A whole synthesis run."""

    mode: Mode = Field(Mode.TESSY, description="Who writes the thinking and who the answer.")
    streaming: bool = Field(False, description="Stream tokens and stop each request at the first boundary.")
    teacher: RoleConfig
    student: RoleConfig
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    methods: MethodsConfig | None = Field(
        None,
        description="Parameters of the comparison modes (teacher-score, teacher-reference, teacher-mix, rsd, "
        "student-select); unset: their defaults.",
        json_schema_extra=HASHED_WHEN_SET,
    )
    data: DataConfig = Field(default_factory=DataConfig, json_schema_extra=NOT_HASHED)
    max_in_flight: int = Field(256, ge=1, description="Samples in progress at once.", json_schema_extra=NOT_HASHED)
    limit: int | None = Field(
        None, ge=1, description="Use only the first N prompts of the input.", json_schema_extra=NOT_HASHED
    )
    max_failure_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A run whose inputs without a record (failed samples, malformed or duplicate lines) "
        "exceed this share of the inputs it read ends with a non-zero exit; 0: any failure does.",
        json_schema_extra=NOT_HASHED,
    )
    samples_per_prompt: int | None = Field(
        None,
        ge=1,
        description="Samples kept per prompt (unset: 1). With more than one, sample k of prompt ID has the id "
        "ID#k and is drawn with seed S + k (S: teacher.sampling.seed, else 0) for both roles.",
        json_schema_extra=HASHED_WHEN_SET,
    )
    keep: Literal["all", "first-passing", "best"] | None = Field(
        None,
        description="all (unset): draw samples_per_prompt samples and keep each; first-passing: draw until "
        "samples_per_prompt have passed verification or max_attempts are drawn; best: draw max_attempts "
        "and keep the samples_per_prompt best (passed first, then score). Every sample drawn is written; "
        "the kept ones have kept: true.",
        json_schema_extra=HASHED_WHEN_SET,
    )
    max_attempts: int | None = Field(
        None,
        ge=1,
        description="Samples drawn per prompt at most with keep: first-passing or best (unset: samples_per_prompt).",
        json_schema_extra=HASHED_WHEN_SET,
    )
    verify: VerifyConfig | None = Field(
        None,
        description="Verify each finished record's answer (kind: math, code or module:function) before it is written.",
        json_schema_extra=HASHED_WHEN_SET,
    )
    progress_interval_s: float = Field(
        30.0,
        ge=0,
        description="Seconds between progress lines `tessy synth` logs when stderr is no terminal "
        "(a log file, a batch job); 0: none.",
        json_schema_extra=NOT_HASHED,
    )

    @model_validator(mode="after")
    def _sampling_plan(self) -> SynthConfig:
        keep, n = self.keep or "all", self.samples_per_prompt or 1
        if keep == "all" and self.max_attempts not in (None, n):
            raise ValueError("max_attempts needs keep: first-passing or best (with keep: all every sample is kept)")
        if keep != "all" and not self.verifies:
            raise ValueError(f"keep: {keep} needs a verifier: set verify.kind (math, code or module:function)")
        if self.max_attempts is not None and self.max_attempts < n:
            raise ValueError(f"max_attempts ({self.max_attempts}) is below samples_per_prompt ({n})")
        return self

    @property
    def verifies(self) -> bool:
        """Whether finished samples are verified (a ``verify:`` section with a kind but ``none``)."""
        return self.verify is not None and self.verify.kind != "none"

    @property
    def attempts(self) -> int:
        """Samples drawn per prompt at most."""
        return self.max_attempts or self.samples_per_prompt or 1

    def config_hash(self) -> str:
        """A short hash of everything that changes the data."""
        return config_hash(self)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
