"""The simulated server's "model": deterministic fake reasoning text.

A response is thinking, ``</think>``, two newlines, an answer and the end-of-turn token. The
thinking is a run of clauses (capability text: words, numbers, formulas) with style phrases
("Okay,", "so", "wait,", "let me check") between some of them, at a rate that differs between
a teacher-like and a student-like model. Everything is a function of the prompt alone:

- the *sample seed* hashes the prompt's content before ``<think>`` with chat tags and role
  names removed, so the teacher (in its format) and the student (in its own) see one sample;
- how long the thinking and the answer run is drawn from the sample seed (the same for every
  model), so teacher-only, student-only and cooperative runs end their thinking at the same
  length, and a cooperative run over it terminates;
- what a request writes is drawn from (model, sample seed, position, request seed): each
  request opens a new clause at the position where the prompt ends.

The vocabulary avoids the lexicon's style phrases in capability text, so a lexicon predictor
cuts where the model switched from one to the other.
"""

from __future__ import annotations

import functools
import hashlib
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .tokenizer import SimTokenizer

__all__ = ["STUDENT", "TEACHER", "FakeModel", "ModelProfile", "Workload", "sim_tokenizer"]

#: Capability words: none is, or starts, a style phrase of the lexicon predictor.
CAPABILITY_WORDS = (
    "the sum of each term gives a bound on n and we check that x is even because every edge joins two "
    "nodes in the tree hence the result is odd when m divides p while the array stays sorted after each "
    "swap of i and j since its length is k with total cost of one pass over all items using a map from "
    "key to count where every value appears at most twice under this rule which keeps an invariant on "
    "left and upper pointers that meet at index mid given modulo seven our loop counts pairs below n"
).split()
FORMULA = ("+", "-", "=", "*", "<", ">", "(", ")")
#: Style phrases as a teacher-like (terse) and a student-like (chatty) model writes them.
TEACHER_PHRASES = (" So", " Wait,", " But", " Now", " Then", " Let's", " Actually,", " Next,")
STUDENT_PHRASES = (
    " Okay, so",
    " Hmm,",
    " Wait,",
    " So",
    " Let me check",
    " Let me see.",
    " Alright,",
    " Now",
    " Then",
    " Alternatively,",
    " But",
    " Oh,",
    " I think",
    " Actually,",
    " Let's see,",
    " Okay,",
)
_STYLE_WORDS = "okay so hmm wait let me check see alright now then alternatively but oh think actually next".split()


@functools.lru_cache(maxsize=1)
def sim_tokenizer() -> SimTokenizer:
    """The tokenizer every simulated model shares (same ids in every process)."""
    return SimTokenizer([*CAPABILITY_WORDS, *_STYLE_WORDS])


@dataclass(frozen=True)
class ModelProfile:
    """How a fake model writes: how likely a request opens with a style phrase, and how likely
    a style phrase comes before each later clause."""

    name: str
    first_style: float
    style_rate: float
    phrases: tuple[str, ...]


TEACHER = ModelProfile("teacher", first_style=0.05, style_rate=0.22, phrases=TEACHER_PHRASES)
STUDENT = ModelProfile("student", first_style=0.95, style_rate=0.45, phrases=STUDENT_PHRASES)


@dataclass(frozen=True)
class Workload:
    """Response lengths, drawn per sample (in tokens of the simulated tokenizer)."""

    think_tokens: tuple[int, int] = (400, 800)
    answer_tokens: tuple[int, int] = (40, 80)

    def lengths(self, sample_seed: int) -> tuple[int, int]:
        rng = random.Random(sample_seed)
        return rng.randint(*self.think_tokens), rng.randint(*self.answer_tokens)


def _seed(*parts: object) -> int:
    data = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass(frozen=True)
class PromptInfo:
    """What the model reads from a prompt: the sample, the phase and the position in it."""

    sample_seed: int
    phase: str  # "think" | "answer"
    position: int  # tokens already written in this phase
    think_start: int  # index of the first token after <think> (0 if there is none)


class FakeModel:
    """Deterministic text for one simulated model."""

    def __init__(self, name: str, profile: ModelProfile, workload: Workload, tokenizer: SimTokenizer) -> None:
        self.name = name
        self.profile = profile
        self.workload = workload
        self.tok = tokenizer
        self._roles = {tokenizer.id_of(w) for w in ("user", "assistant", "system")}
        self._space = {i for i in range(tokenizer.vocab_size) if tokenizer.piece(i).isspace()}
        self._phrases = [tokenizer.encode(p) for p in profile.phrases]
        self._words = [tokenizer.encode(" " + w) for w in CAPABILITY_WORDS]
        self._formula = [tokenizer.encode(" " + f) for f in FORMULA]
        self._numbers = [tokenizer.encode(f" {n}") for n in range(100)]
        self._end = [tokenizer.id_of(p) for p in (".", ",", ":")]
        self._nl = tokenizer.id_of("\n")

    def logprob(self, prev: int, token: int) -> float:
        """A made-up but fixed log-probability of ``token`` after ``prev``, in [-3.05, -0.05]."""
        u = zlib.crc32(f"{self.name}:{prev}:{token}".encode()) / 2**32
        return -(0.05 + 3.0 * u)

    def top_logprobs(self, prev: int, token: int, k: int) -> list[tuple[int, float]]:
        """``token`` with its log-probability, then ``k`` less likely alternatives (vLLM returns
        the chosen token plus the top ``k``)."""
        lp = self.logprob(prev, token)
        size = self.tok.vocab_size
        alternatives = [((token + 7919 * (i + 1)) % size, lp - 0.7 * (i + 1)) for i in range(k)]
        return [(token, lp), *alternatives]

    def read(self, prompt_ids: Sequence[int]) -> PromptInfo:
        tok = self.tok
        start = end = -1
        for i in range(len(prompt_ids) - 1, -1, -1):
            t = prompt_ids[i]
            if t == tok.think_end_id and end < 0:
                end = i
            elif t == tok.think_start_id:
                start = i
                break
        header = prompt_ids[:start] if start >= 0 else prompt_ids
        content = [t for t in header if t not in tok.special_ids and t not in self._roles and t not in self._space]
        sample_seed = _seed(*content)
        if start < 0:
            return PromptInfo(sample_seed, "answer", 0, 0)
        if end > start:
            return PromptInfo(sample_seed, "answer", len(prompt_ids) - end - 1, start + 1)
        return PromptInfo(sample_seed, "think", len(prompt_ids) - start - 1, start + 1)

    def continuation(self, info: PromptInfo, *, seed: int | None = None, ignore_eos: bool = False) -> Iterator[int]:
        """The tokens this model writes after a prompt, one at a time (endless with ``ignore_eos``)."""
        think_len, answer_len = self.workload.lengths(info.sample_seed)
        rng = random.Random(_seed(self.name, info.sample_seed, info.phase, info.position, seed))
        tok = self.tok
        if info.phase == "think":
            left = think_len - info.position
            if left > 0:
                yield from self._clauses(rng, left, style=True)
            yield tok.think_end_id
            yield self._nl
            yield self._nl
            answer_left = answer_len
        else:
            answer_left = answer_len - max(0, info.position - 2)
        if answer_left > 0:
            yield from self._clauses(rng, answer_left, style=False)
        if not ignore_eos:
            yield tok.eos_id
            return
        while True:  # ignore_eos: keep writing
            yield from self._clauses(rng, 64, style=False)

    def _clauses(self, rng: random.Random, n: int, *, style: bool) -> Iterator[int]:
        """Exactly ``n`` tokens of clauses, with style phrases between them when ``style``."""
        p = self.profile
        first = True
        while n > 0:
            unit: list[int] = []
            if style and rng.random() < (p.first_style if first else p.style_rate):
                unit += rng.choice(self._phrases)
            first = False
            for _ in range(rng.randint(4, 12)):
                r = rng.random()
                if r < 0.7:
                    unit += rng.choice(self._words)
                elif r < 0.85:
                    unit += rng.choice(self._numbers)
                else:
                    unit += rng.choice(self._formula)
            unit.append(rng.choice(self._end))
            yield from unit[:n]
            n -= len(unit)
