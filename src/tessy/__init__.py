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
from .build import build_engine
from .config import SynthConfig, load_config
from .engine import Engine, Limits, RepetitionGuard, Role
from .errors import (
    BackendError,
    BoundaryError,
    ConfigError,
    DataError,
    FormatError,
    MissingDependencyError,
    TessyError,
)
from .formats import Format, get_format
from .records import Mode, Sample, SampleResult, SampleStats, Span
from .synth import RunSummary, asynthesize, synthesize
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
    "Format",
    "FormatError",
    "GenerateRequest",
    "Generation",
    "LexiconPredictor",
    "Limits",
    "MissingDependencyError",
    "Mode",
    "Prompt",
    "RepetitionGuard",
    "Role",
    "RunSummary",
    "Sample",
    "SampleResult",
    "SampleStats",
    "SamplingParams",
    "ScoreRequest",
    "Scorer",
    "ScriptedBackend",
    "Span",
    "SynthConfig",
    "TessyError",
    "TokenScores",
    "TokenType",
    "__version__",
    "asynthesize",
    "build_engine",
    "get_format",
    "load_config",
    "synthesize",
]
