"""``tessy predictor eval``: how well a predictor finds the annotated style tokens.

Every predictor is scored the same way, on a *reference tokenizer* (a trained classifier's own,
or any other given): each annotated window is tokenized after its context; the gold type of each
token follows :mod:`tessy.predictor.labels`; the predictor is asked for the next-token types of
the window's tokens exactly as the engine asks it (context, then the tokens as pieces).

- **Per-token scores** of the *style* class over every position whose next token lies in the
  window: precision, recall, F1 (and accuracy). A position the predictor leaves unknown counts
  as "not style".
- **First-cut accuracy**: per window, the first position whose next token is of the other role's
  type (style in a teacher's trace, capability in a student's), as the engine would cut, against
  the same from the annotations; both "no cut" agree. The share of windows where they agree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..boundary.base import NextTokenTypePredictor, TokenType, first_switch
from ..boundary.classifier import ClassifierPredictor
from ..boundary.lexicon import LexiconPredictor
from ..errors import ConfigError, DataError
from ..jsonl import read_jsonl
from ..records import Source
from ..text import TextView
from .labels import AnnotatedWindow, first_labelled, token_types

__all__ = ["Metrics", "evaluate", "evaluate_windows", "read_windows"]

logger = logging.getLogger(__name__)

Tokenize = Callable[[str], tuple[list[int], list[tuple[int, int]]]]


@dataclass
class Metrics:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    windows: int = 0
    cuts_right: int = 0

    @property
    def positions(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.positions if self.positions else 0.0

    @property
    def first_cut_accuracy(self) -> float:
        return self.cuts_right / self.windows if self.windows else 0.0

    def add(self, gold: Sequence[int], pred: Sequence[int]) -> None:
        for g, p in zip(gold, pred, strict=True):
            if g and p:
                self.tp += 1
            elif p:
                self.fp += 1
            elif g:
                self.fn += 1
            else:
                self.tn += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "accuracy": round(self.accuracy, 4),
            "first_cut_accuracy": round(self.first_cut_accuracy, 4),
            "positions": self.positions,
            "style_positions": self.tp + self.fn,
            "windows": self.windows,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


@dataclass(frozen=True)
class _Case:
    window: AnnotatedWindow
    context: str
    pieces: list[str]
    gold: list[TokenType]  # gold next-token types at the labelled positions (pieces[:-1])


def _case(window: AnnotatedWindow, tokenize: Tokenize) -> _Case | None:
    text = window.text
    _, offsets = tokenize(text)
    if len(offsets) < 2:
        return None
    types = token_types(text, offsets, window.text_spans())
    first = first_labelled(text, offsets, window.offset)
    f = max(first - 1, 0)  # the first position whose next token is in the window
    if f >= len(offsets) - 1:
        return None
    bounds = [a for a, _ in offsets[f:]]
    pieces = [text[a:b] for a, b in zip(bounds, [*bounds[1:], len(text)], strict=True)]
    gold = [types[j + 1] for j in range(f, len(offsets) - 1)]
    return _Case(window, text[: bounds[0]], pieces, gold)


def evaluate_windows(
    windows: Sequence[AnnotatedWindow],
    predictor: NextTokenTypePredictor,
    tokenize: Tokenize,
    *,
    batch_size: int = 16,
) -> Metrics:
    """Score ``predictor`` on ``windows``, tokenized by ``tokenize`` (see the module docstring)."""
    cases = [c for c in (_case(w, tokenize) for w in windows) if c is not None]
    if isinstance(predictor, ClassifierPredictor):
        predicted = predictor.predict_many([(c.context, c.pieces) for c in cases], batch_size=batch_size)
    else:
        predicted = [predictor.next_token_types(TextView.of(c.context), c.pieces) for c in cases]
    metrics = Metrics()
    for case, pred in zip(cases, predicted, strict=True):
        pred = pred[: len(case.gold)]
        metrics.add([int(g) for g in case.gold], [int(p is TokenType.STYLE) for p in pred])
        role: Source = "teacher" if case.window.role == "teacher" else "student"
        last = len(case.gold) - 1
        metrics.windows += 1
        metrics.cuts_right += first_switch(role, case.gold, last) == first_switch(role, pred, last)
    return metrics


def read_windows(paths: Sequence[Path]) -> list[AnnotatedWindow]:
    windows = [AnnotatedWindow.from_record(r) for path in paths for r in read_jsonl(path)]
    if not windows:
        raise DataError(f"no annotated windows in {', '.join(map(str, paths))}")
    return windows


def hf_tokenize(tokenizer: Any) -> Tokenize:
    """A :data:`Tokenize` function from a Hugging Face fast tokenizer."""

    def tokenize(text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]

    return tokenize


def evaluate(
    data: Sequence[Path],
    predictor: str | Path,
    *,
    tokenizer: str | Path | None = None,
    threshold: float = 0.5,
    window: int = 200,
    device: str = "auto",
    batch_size: int = 16,
) -> Metrics:
    """Score a predictor (``"lexicon"`` or a classifier checkpoint folder) on annotated windows.

    The reference tokenizer is ``tokenizer`` (a checkpoint folder, GGUF file or catalogued
    model), else the classifier's own; the lexicon needs one given.
    """
    windows = read_windows(data)
    chosen: NextTokenTypePredictor
    if str(predictor) == "lexicon":
        if tokenizer is None:
            raise ConfigError(
                "scoring the lexicon needs a reference tokenizer: give --tokenizer (e.g. a trained predictor)"
            )
        chosen = LexiconPredictor()
    else:
        chosen = ClassifierPredictor.load(Path(predictor), device=device, threshold=threshold, window=window)
    if tokenizer is not None:
        from .backbone import load_tokenizer

        tokenize = hf_tokenize(load_tokenizer(tokenizer))
    else:
        assert isinstance(chosen, ClassifierPredictor)
        tokenize = chosen.model.tokenize
    metrics = evaluate_windows(windows, chosen, tokenize, batch_size=batch_size)
    logger.info("evaluated %s on %d windows: %s", predictor, metrics.windows, metrics.to_dict())
    return metrics
