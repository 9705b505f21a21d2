"""tessy: teacher-student cooperative synthesis of SFT data for reasoning models (TESSY).

The teacher writes the capability text, the student writes the style text, and boundary
predictors decide where to switch, so the data keeps the teacher's skill in the student's voice.
"""

from .backends import (
    Backend,
    GenerateRequest,
    Generation,
    Prompt,
    SamplingParams,
    Scorer,
    ScoreRequest,
    ScriptedBackend,
    TokenScores,
)
from .boundary import BoundaryPredictor, CutQuery, LexiconPredictor, TokenType
from .build import build_engine, build_role
from .config import SynthConfig, describe_config, load_config
from .engine import Engine, Limits, RepetitionGuard, Role
from .errors import (
    BackendError,
    BoundaryError,
    ConfigError,
    DataError,
    FormatError,
    JudgeOutputError,
    MissingDependencyError,
    MissingModelError,
    ModelError,
    ServerStartError,
    ShardError,
    TessyError,
)
from .formats import Format, get_format
from .prompts import iter_samples
from .records import (
    Failure,
    FailureRecord,
    Mode,
    Record,
    RunStats,
    Sample,
    SampleResult,
    SampleStats,
    Span,
    read_failures,
    read_records,
)
from .scale import synthesize_sharded
from .synth import RunSummary, Synthesis, asynthesize, synthesize
from .version import __version__

__all__ = [
    "Backend",
    "BackendError",
    "BoundaryError",
    "BoundaryPredictor",
    "ConfigError",
    "CutQuery",
    "DataError",
    "Engine",
    "Failure",
    "FailureRecord",
    "Format",
    "FormatError",
    "GenerateRequest",
    "Generation",
    "JudgeOutputError",
    "LexiconPredictor",
    "Limits",
    "MissingDependencyError",
    "MissingModelError",
    "Mode",
    "ModelError",
    "Prompt",
    "Record",
    "RepetitionGuard",
    "Role",
    "RunStats",
    "RunSummary",
    "Sample",
    "SampleResult",
    "SampleStats",
    "SamplingParams",
    "ScoreRequest",
    "Scorer",
    "ScriptedBackend",
    "ServerStartError",
    "ShardError",
    "Span",
    "SynthConfig",
    "Synthesis",
    "TessyError",
    "TokenScores",
    "TokenType",
    "__version__",
    "asynthesize",
    "build_engine",
    "build_role",
    "describe_config",
    "get_format",
    "iter_samples",
    "load_config",
    "read_failures",
    "read_records",
    "synthesize",
    "synthesize_sharded",
]
