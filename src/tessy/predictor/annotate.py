"""``tessy predictor annotate``: mark the style spans of traces, with a judge model or the lexicon.

Each trace is cut into windows of about 60 words (see :mod:`tessy.predictor.labels`). An LLM judge
(any tessy backend) is shown one window and asked for the style phrases in it, verbatim and in
order, as a JSON list of strings (:data:`JUDGE_INSTRUCTIONS`, with the worked :data:`JUDGE_EXAMPLES` as earlier chat turns). Its output is parsed leniently (code
fences, prose around the list, a list cut short by the token limit) and checked strictly: every
phrase must be found verbatim in the window, searching left to right, each search starting where
the previous match ended. An output that does not parse, or names a phrase not found, is rejected
as a whole and counted; it never becomes a guessed annotation.

``judge="lexicon"`` annotates without a model: the spans are the lexicon predictor's phrase
matches, each extended over the punctuation right after it ("Okay," rather than "Okay").

Output, one record a window: ``{trace_id, role, window_index, window_start, window_end, context,
window_text, spans: [[start, end], ...], judge}`` with spans in window characters and ``context``
the trace text before the window (its tail). Rejected windows go to ``OUT.rejected.jsonl`` with
the reason and the raw output. A rerun skips windows already in either file.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends import GenerateRequest, Prompt
from ..boundary.lexicon import LexiconPredictor
from ..engine import Role
from ..errors import BackendError, ConfigError, JudgeOutputError
from ..jsonl import JsonlWriter, read_jsonl
from ..workers import map_unordered
from .labels import Window, cut_windows

__all__ = [
    "JUDGE_EXAMPLES",
    "JUDGE_INSTRUCTIONS",
    "AnnotateSummary",
    "JudgeOutputError",
    "aannotate",
    "lexicon_spans",
    "locate_spans",
    "parse_judge_output",
    "rejected_path",
]

logger = logging.getLogger(__name__)

#: What the judge is told, as the first user turn (the examples follow as earlier turns).
JUDGE_INSTRUCTIONS = """\
You mark STYLE phrases in passages of a model's step-by-step reasoning.

Style phrases steer or colour the reasoning without carrying any of its content: transitions and
connectives (So, Now, Then, Next, But wait), fillers and hesitations (Okay, Hmm, Well, Let me
think, Let's see), and tone-setting or self-talk (Alright, I think, That seems right).

Everything else is NOT style: facts, steps of the solution, numbers, formulas, code, names of
variables or functions, and conclusions about the problem. Most of a passage is not style; many
passages have no style phrase at all.

Copy each style phrase exactly as written in the passage (same letters, case and punctuation),
in the order they appear. Answer with a JSON list of strings and nothing else; answer [] when the
passage has none."""

#: Worked examples, shown to the judge as earlier turns of the conversation: (passage, answer).
JUDGE_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "Okay, so we need the sum of 17 and 25. Let me add the units first: 7 + 5 = 12. Hmm, that "
        "carries one. So the total is 42.",
        '["Okay, so", "Let me", "Hmm,", "So"]',
    ),
    (
        "The function iterates over the list once and keeps a running total, so it runs in O(n) "
        "time and O(1) extra space.\n\ndef total(xs):\n    return sum(xs)",
        "[]",
    ),
    (
        "The area is 6 * 4 = 24. Wait, the question asks for the perimeter. Alright, then it is 2 * (6 + 4) = 20.",
        '["Wait,", "Alright, then"]',
    ),
)

#: How much of the trace before a window is kept with it (the predictor's left context).
CONTEXT_CHARS = 1200

_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)
_TRAILING_PUNCT = re.compile(r"[^\w\s]+")


def parse_judge_output(output: str) -> list[str]:
    """The list of phrases in a judge's output.

    Accepted: a JSON list of strings, alone or inside a code fence or with prose around it; a
    list cut short (no closing bracket) is closed after its last complete string. Rejected
    (:class:`JudgeOutputError`, reason ``unparsable``): no list, or a list holding anything but strings.
    """
    candidates = [m.group(1) for m in _FENCE.finditer(output)] + [output]
    decoder = json.JSONDecoder()
    problem = "no JSON list found"
    for text in candidates:
        i = text.find("[")
        while i >= 0:
            decoded = _decode_list(decoder, text[i:])
            if decoded is None:
                i = text.find("[", i + 1)
                continue
            value, length = decoded
            if all(isinstance(v, str) for v in value):
                return list(value)
            problem = "the list holds something other than strings"
            i = text.find("[", i + length)  # not inside it: a nested list is not the answer
    raise JudgeOutputError("unparsable", f"{problem}: {output[:200]!r}")


#: How many string ends a list cut short is tried closed after (from its end backwards).
_REPAIR_TRIES = 8


def _decode_list(decoder: json.JSONDecoder, text: str) -> tuple[list[Any], int] | None:
    """The list at the start of ``text`` and how many characters it spans, or ``None``."""
    try:
        value, end = decoder.raw_decode(text)
    except json.JSONDecodeError:
        # Cut short by the token limit: close the list after its last complete string.
        value = None
        quote = len(text)
        for _ in range(_REPAIR_TRIES):
            quote = text.rfind('"', 0, quote)
            if quote <= 0:
                return None
            try:
                value, _ = decoder.raw_decode(text[: quote + 1] + "]")
                end = len(text)
                break
            except json.JSONDecodeError:
                continue
        if value is None:
            return None
    return (value, end) if isinstance(value, list) else None


def locate_spans(window: str, phrases: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of ``phrases`` in ``window``, found verbatim and in order.

    Each phrase (stripped of surrounding whitespace; empty ones are skipped) is searched from the
    end of the previous match. A phrase not found raises :class:`JudgeOutputError` (``not_verbatim``).
    """
    spans: list[tuple[int, int]] = []
    pos = 0
    for phrase in phrases:
        needle = phrase.strip()
        if not needle:
            continue
        at = window.find(needle, pos)
        if at < 0:
            where = "at all" if needle not in window else "after the previous phrase"
            raise JudgeOutputError("not_verbatim", f"{needle!r} is not in the window {where}")
        spans.append((at, at + len(needle)))
        pos = at + len(needle)
    return spans


def lexicon_spans(window: str, lexicon: LexiconPredictor) -> list[tuple[int, int]]:
    """The lexicon's phrase matches in ``window``, each extended over the punctuation after it;
    matches with only whitespace between them are one span (``"Okay, so"``)."""
    spans: list[tuple[int, int]] = []
    for a, b in lexicon.phrase_spans(window):
        punct = _TRAILING_PUNCT.match(window, b)
        if punct is not None:
            b = punct.end()
        if spans and (a <= spans[-1][1] or window[spans[-1][1] : a].isspace()):
            spans[-1] = (spans[-1][0], max(b, spans[-1][1]))
        else:
            spans.append((a, b))
    return spans


def rejected_path(output: Path) -> Path:
    return output.with_name(output.stem + ".rejected.jsonl")


@dataclass
class AnnotateSummary:
    output: Path | None = None
    traces: int = 0
    windows: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    spans: int = 0
    window_chars: int = 0
    style_chars: int = 0
    wall_s: float = 0.0

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def style_share(self) -> float:
        return self.style_chars / self.window_chars if self.window_chars else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output) if self.output else None,
            "traces": self.traces,
            "windows": self.windows,
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "skipped": self.skipped,
            "spans": self.spans,
            "style_char_share": round(self.style_share, 4),
            "wall_s": round(self.wall_s, 2),
        }


@dataclass(frozen=True)
class _Job:
    trace_id: str
    role: str
    window: Window
    context: str


def judge_messages(window_text: str) -> list[dict[str, str]]:
    """The judge's conversation: instructions with the first example, the other examples, then the window."""
    messages: list[dict[str, str]] = []
    for i, (passage, answer) in enumerate(JUDGE_EXAMPLES):
        intro = JUDGE_INSTRUCTIONS + "\n\n" if i == 0 else ""
        messages.append({"role": "user", "content": f"{intro}Passage:\n{passage}"})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": f"Passage:\n{window_text}"})
    return messages


def judge_prompt(role: Role, window_text: str, prefill: str) -> str:
    """The judge's whole prompt in its chat format, the answer opened (thinking closed empty)."""
    return role.format.render_answer(judge_messages(window_text), "") + prefill


async def aannotate(
    inputs: Sequence[Path],
    output: Path,
    *,
    judge: Role | str = "lexicon",
    window_words: int = 60,
    concurrency: int = 8,
    max_tokens: int = 96,
    prefill: str = '["',
    context_chars: int = CONTEXT_CHARS,
    limit: int | None = None,
    lexicon: LexiconPredictor | None = None,
    progress: Callable[[AnnotateSummary], None] | None = None,
) -> AnnotateSummary:
    """Annotate the windows of the traces in ``inputs`` into ``output`` (see the module docstring).

    ``judge`` is ``"lexicon"`` or a :class:`Role` whose backend and format the judge uses; the
    caller closes its backend. ``prefill`` opens the judge's answer and is parsed with the
    output: ``'["'`` steers small models into a list of quoted strings (an answer of ``"]`` then
    reads as ``[""]``, an empty phrase, which is skipped: no style). ``limit`` takes only the
    first ``limit`` windows of the inputs, counting those annotated by an earlier run: run
    again, it finishes what was missing and adds no more.
    """
    if isinstance(judge, str) and judge != "lexicon":
        raise ConfigError(f"unknown judge {judge!r}: give 'lexicon' or a model")
    if concurrency < 1 or max_tokens < 1:
        raise ConfigError("concurrency and max_tokens must be at least 1")
    summary = AnnotateSummary(output=output)
    rejected_file = rejected_path(output)
    done = {
        (str(r.get("trace_id")), int(r.get("window_index", -1)))
        for path in (output, rejected_file)
        for r in read_jsonl(path, missing_ok=True)
    }
    judge_name = "lexicon" if isinstance(judge, str) else f"{type(judge.backend).__name__}:{judge.name}"
    lex = lexicon or (LexiconPredictor() if isinstance(judge, str) else None)
    started = time.perf_counter()

    def jobs() -> Iterator[_Job]:
        queued = 0
        for path in inputs:
            for trace in read_jsonl(path):
                text = trace.get("text")
                if not isinstance(text, str) or not text.strip():
                    continue
                summary.traces += 1
                trace_id = str(trace.get("id"))
                for window in cut_windows(text, window_words):
                    if limit is not None and queued + summary.skipped >= limit:
                        return
                    if (trace_id, window.index) in done:
                        summary.skipped += 1
                        continue
                    queued += 1
                    context = _context(text, window.start, context_chars)
                    yield _Job(trace_id, str(trace.get("role", "")), window, context)

    source = jobs()
    with JsonlWriter(output) as accepted, JsonlWriter(rejected_file) as rejected:

        def record(job: _Job, spans: list[tuple[int, int]] | None, reason: str = "", raw: str = "") -> None:
            summary.windows += 1
            base = {"trace_id": job.trace_id, "role": job.role, "window_index": job.window.index}
            if spans is None:
                summary.rejected[reason] += 1
                rejected.write({**base, "reason": reason, "output": raw, "window_text": job.window.text})
            else:
                summary.accepted += 1
                summary.spans += len(spans)
                summary.window_chars += len(job.window.text)
                summary.style_chars += sum(b - a for a, b in spans)
                accepted.write(
                    {
                        **base,
                        "window_start": job.window.start,
                        "window_end": job.window.end,
                        "context": job.context,
                        "window_text": job.window.text,
                        "spans": [[a, b] for a, b in spans],
                        "judge": judge_name,
                    }
                )
            summary.wall_s = time.perf_counter() - started
            if progress is not None:
                progress(summary)

        if isinstance(judge, str):
            assert lex is not None
            for job in source:
                record(job, lexicon_spans(job.window.text, lex))
        else:
            role = judge

            async def ask(job: _Job) -> tuple[_Job, str | BackendError]:
                try:
                    return job, await _ask(role, job, max_tokens, prefill)
                except BackendError as exc:
                    return job, exc

            async with aclosing(map_unordered(ask, source, concurrency=concurrency)) as answers:
                async for job, raw in answers:
                    if isinstance(raw, BackendError):
                        record(job, None, "request_failed", str(raw))
                        continue
                    try:
                        spans = locate_spans(job.window.text, parse_judge_output(prefill + raw))
                    except JudgeOutputError as exc:
                        record(job, None, exc.reason, raw)
                    else:
                        record(job, spans)
    summary.wall_s = time.perf_counter() - started
    logger.info("annotated windows: %s", summary.to_dict())
    return summary


def _context(text: str, start: int, n_chars: int) -> str:
    """Up to ``n_chars`` of ``text`` before ``start``, beginning at a word (not inside one)."""
    begin = max(0, start - n_chars)
    if begin > 0 and not text[begin - 1].isspace():
        space = next((i for i in range(begin, start) if text[i].isspace()), start)
        begin = space
    return text[begin:start]


async def _ask(role: Role, job: _Job, max_tokens: int, prefill: str) -> str:
    fmt = role.format
    sample_id = f"judge:{job.trace_id}#{job.window.index}"
    request = GenerateRequest(
        prompt=Prompt.of(judge_prompt(role, job.window.text, prefill)),
        max_tokens=max_tokens,
        # "]" ends the list: nothing after it is read, and a stop string is not returned (the
        # parser closes a list cut after its last complete string).
        stop=("]", "\n\n", *fmt.answer_stop),
        sampling=role.sampling,
        sample_id=sample_id,
        role="judge",
        phase="answer",  # metadata: the judge answers (its thinking is closed in the prompt)
    )
    async with role.session(sample_id):  # one question, one session: the backend drops its cache after
        gen = await role.backend.generate(request)
    return gen.text
