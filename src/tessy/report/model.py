"""What a report holds: every measure of every run, and the rendered HTML."""

from __future__ import annotations

from dataclasses import dataclass, field

from .nll import RunNLL
from .runs import Run, RunFigures
from .style import Similarity

__all__ = ["Report"]


@dataclass
class Report:
    """Everything the HTML shows; ``html`` is the rendered file."""

    runs: list[Run]
    figures: list[RunFigures]
    tokenizer_name: str
    similarity: Similarity | None = None
    pca_png: str | None = None
    hist_png: str | None = None
    style_words: list[str] = field(default_factory=list)
    style: list[dict[str, float]] = field(default_factory=list)
    style_png: str | None = None
    nll: list[RunNLL] | None = None
    nll_note: str = ""
    scorer_name: str = ""
    viewer_ids: list[str] = field(default_factory=list)
    html: str = ""
