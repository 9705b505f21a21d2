"""What a benchmark runs (:class:`BenchConfig`, the :data:`QUICK` and :data:`FULL` presets),
and the one run config both transports build tessy's engine from (:func:`synth_config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import SynthConfig, validate_config
from .engine import SimParams
from .model import Workload

__all__ = ["CLIENT", "FULL", "QUICK", "STUDENT_MODEL", "TEACHER_MODEL", "BenchConfig", "Transport", "synth_config"]

Transport = Literal["http", "in-process"]
#: The served model names (see :func:`tessy.bench.engine.make_engines`).
TEACHER_MODEL, STUDENT_MODEL = "sim-teacher", "sim-student"


@dataclass(frozen=True)
class BenchConfig:
    """What to run. Each concurrency level runs ``max(min_samples, waves * concurrency)`` samples."""

    concurrency: tuple[int, ...] = (1, 16, 64)
    waves: int = 3
    min_samples: int = 6
    chunk_tokens: int = 20
    format: str = "qwen3"
    workload: Workload = field(default_factory=lambda: Workload((1000, 2000), (80, 160)))
    params: SimParams = field(default_factory=SimParams)
    transport: Transport = "in-process"
    #: Replace the predictors' lookahead (tokens a streamed cut waits for past its next token);
    #: ``None`` keeps theirs. A sensitivity knob: the lexicon needs 5, a causal classifier 0.
    lookahead: int | None = None
    #: Ask the servers for per-token text (``logprobs``); off, pieces are split on the client.
    logprobs: bool = True

    def samples_at(self, concurrency: int) -> int:
        return max(self.min_samples, self.waves * concurrency)

    @property
    def most_tokens(self) -> int:
        """The longest response the workload writes (thinking plus answer)."""
        return self.workload.think_tokens[1] + self.workload.answer_tokens[1]


#: Seconds on the virtual clock; about four minutes over HTTP in real time.
QUICK = BenchConfig(waves=2, min_samples=3, workload=Workload((300, 600), (30, 60)))
FULL = BenchConfig()
#: The client's own cost: a fast server (2 ms decode steps, 0.2 ms front end per request, no
#: per-sequence step cost) that one client process cannot outrun, 256 samples, 64 in flight, over
#: HTTP with the server in its own process. Its rows tell client CPU per kept token and request.
CLIENT = BenchConfig(
    concurrency=(64,),
    waves=4,
    min_samples=256,
    workload=Workload((300, 600), (30, 60)),
    params=SimParams(decode_step_s=0.002, request_overhead_s=0.0002, decode_s_per_seq=0.0),
    transport="http",
    logprobs=False,
)


def synth_config(config: BenchConfig, url: str, *, streaming: bool, concurrency: int) -> SynthConfig:
    """The run config of the TESSY setups at one concurrency: both roles on tessy's
    OpenAI-compatible backend at ``url``, serving the teacher and student models.

    The in-process transport keeps every setting but the backend, which it replaces with one
    wired straight to the simulated engine of the role's ``model``. Budgets leave room for twice
    the longest response, so that no guard cuts a sample short.
    """

    def role(model: str) -> dict[str, object]:
        return {
            "backend": "openai",
            "endpoints": [url],
            "model": model,
            "format": config.format,
            "chunk_tokens": config.chunk_tokens,
            "max_concurrency": concurrency,
            "sampling": {"seed": 0},
            "logprobs": config.logprobs,
            "predictor": {"type": "lexicon", "lookahead": config.lookahead},
        }

    most = config.most_tokens
    return validate_config(
        {
            "mode": "tessy",
            "streaming": streaming,
            "teacher": role(TEACHER_MODEL),
            "student": role(STUDENT_MODEL),
            "guards": {"max_total_tokens": 2 * most + 64, "max_thinking_tokens": 2 * most, "repetition": False},
            "max_in_flight": concurrency,
        },
        source="the benchmark's run config",
    )
