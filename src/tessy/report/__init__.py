"""``tessy report``: judge the data before fine-tuning on it.

One self-contained HTML file with, per run: who wrote how much (teacher and student token
shares), switches per sample, response lengths, requests, discarded tokens and failures by
reason; between runs on the same prompts (matched by sample id): TF-IDF cosine similarity of
responses in the student's tokenizer, a PCA plot of the TF-IDF vectors with run centroids, and
style words per thousand tokens; with a student that can score text, its negative
log-likelihood of each run's thinking; and a viewer colouring teacher and student spans.

Needs the ``report`` extra (matplotlib, scikit-learn); the student's tokenizer and an
in-process scoring model need the ``hf`` extra.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from ..backends.base import Scorer
from ..errors import BackendError, ConfigError, TessyError
from ..formats import Format, get_format
from .model import Report
from .nll import RunNLL, run_nll
from .runs import Run, RunFigures, load_run, run_figures
from .style import (
    STYLE_WORDS,
    TextTokenizer,
    hf_text_tokenizer,
    pca_points,
    style_rates,
    tfidf_similarity,
    word_tokenizer,
)

__all__ = ["Report", "Run", "RunFigures", "RunNLL", "build_report", "load_run", "write_report"]

logger = logging.getLogger(__name__)

#: Style words shown: the most frequent ones across runs.
TOP_STYLE_WORDS = 20


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        stem = p.name[: -len(p.suffix)] if p.suffix else p.name
        name, n = stem, 2
        while name in names:
            name, n = f"{stem} ({n})", n + 1
        names.append(name)
    return names


def _viewer_ids(runs: Sequence[Run], n: int) -> list[str]:
    """Samples to show: those every run answered first (to compare), then the first run's others."""
    sets = [set(r.by_id) for r in runs]
    common = set.intersection(*sets) if sets else set()
    order = [rec.id for rec in runs[0].records] if runs else []
    ids = [i for i in order if i in common][:n]
    ids += [i for i in order if i not in common][: n - len(ids)]
    return ids


def build_report(
    runs: Sequence[Run],
    *,
    tokenizer: TextTokenizer | None = None,
    tokenizer_name: str = "a word tokenizer (lower-cased words and punctuation)",
    scorer: Scorer | None = None,
    scorer_name: str = "the student",
    student_format: Format | None = None,
    samples: int = 20,
    nll_samples: int = 32,
    close_scorer: bool = False,
) -> Report:
    """Compute every measure for ``runs`` (the first is the main one) and render the HTML.

    Scoring runs in its own event loop (``asyncio.run``), so call this from synchronous code;
    ``close_scorer`` closes the scorer in that same loop when it is done.
    """
    if not runs:
        raise TessyError("give at least one run to report on")
    from . import plots
    from .html import render_html

    split = tokenizer or word_tokenizer
    figures = [run_figures(r) for r in runs]
    report = Report(
        list(runs), figures, tokenizer_name if tokenizer else "a word tokenizer (lower-cased words and punctuation)"
    )
    names = [r.name for r in runs]

    responses = [{rec.id: split(rec.response or "") for rec in r.records} for r in runs]
    report.similarity = tfidf_similarity(names, responses)
    points = pca_points([list(d.values()) for d in responses])
    if points is not None:
        report.pca_png = plots.pca_figure(names, points)

    rates: list[dict[str, float]] = []
    for r in runs:
        thinking = [rec.thinking for rec in r.records]
        n_tokens = sum(len(split(t)) for t in thinking)
        rates.append(style_rates(thinking, n_tokens))
    report.style = rates
    ranked = sorted(STYLE_WORDS, key=lambda w: max(r[w] for r in rates), reverse=True)
    report.style_words = [w for w in ranked if max(r[w] for r in rates) > 0][:TOP_STYLE_WORDS]
    if report.style_words:
        report.style_png = plots.style_figure(names, report.style_words, rates)
    report.hist_png = plots.histograms(
        names,
        [
            ("switches per sample", [[float(rec.stats.switches) for rec in r.records] for r in runs]),
            ("response length (report tokens)", [[float(len(t)) for t in d.values()] for d in responses]),
            ("requests per sample", [[float(rec.stats.requests) for rec in r.records] for r in runs]),
        ],
    )

    if scorer is None:
        report.nll_note = (
            "Not computed: give a student that can score text (--student with a backend that returns "
            "log-probabilities, or --score-model with a model file)."
        )
    else:
        fmt = student_format or get_format(runs[0].student_format or "qwen3")

        async def score(s: Scorer) -> list[RunNLL]:
            try:
                return await run_nll(runs, s, fmt, max_samples=nll_samples)
            finally:
                if close_scorer:
                    await s.aclose()

        try:
            report.nll = asyncio.run(score(scorer))
            report.scorer_name = scorer_name
        except BackendError as exc:
            logger.warning("no NLL: %s", exc)
            report.nll_note = f"Not computed: {scorer_name or 'the scorer'} cannot score text ({exc})."

    report.viewer_ids = _viewer_ids(runs, samples)
    report.html = render_html(report)
    return report


def write_report(
    run: Path,
    compare: Sequence[Path] = (),
    *,
    html: Path | None = None,
    student_config: Path | None = None,
    tokenizer: str | None = None,
    score_model: str | None = None,
    samples: int = 20,
    nll_samples: int = 32,
) -> tuple[Path, Report]:
    """Read the runs, build the report and write it (by default beside ``run`` as ``RUN.report.html``).

    ``student_config`` is a tessy run config: its student role gives the format, the tokenizer
    (a ``tokenizer`` field, where the role has one) and, if its backend can score text, the
    scorer. ``tokenizer`` (a catalogued model, a GGUF file or a model folder) and
    ``score_model`` (the same, scored in-process with transformers) override it.
    """
    paths = [run, *compare]
    runs = [load_run(p, name) for p, name in zip(paths, _unique_names(paths), strict=True)]
    student_format: Format | None = None
    scorer: Scorer | None = None
    scorer_name = ""
    tokenizer_ref = tokenizer
    if student_config is not None:
        from ..build import build_backend, build_format, build_tokenizer
        from ..config import load_config

        role = load_config(student_config).student
        backend = build_backend(role) if score_model is None else None
        # The student's format as synthesis builds it: its options and its tokenizer's chat template.
        student_format = build_format(role, build_tokenizer(role, backend))
        tokenizer_ref = tokenizer_ref or role.tokenizer or (role.model if role.backend == "hf" else None)
        if backend is not None:
            if backend.supports_scoring:
                scorer, scorer_name = backend, f"the student of {student_config.name} ({role.backend} backend)"
            else:
                asyncio.run(backend.aclose())
                logger.warning("the student's %s backend cannot score text: no NLL (give --score-model)", role.backend)
    if score_model is not None:
        from ..scoring import TransformersScorer

        scorer = TransformersScorer(score_model)
        scorer_name = f"{score_model} (in-process transformers)"
    split: TextTokenizer | None = None
    tokenizer_name = ""
    if tokenizer_ref:
        from ..hf import load_hf_tokenizer

        split = hf_text_tokenizer(load_hf_tokenizer(str(tokenizer_ref)))
        tokenizer_name = f"the tokenizer of {tokenizer_ref}"
    report = build_report(
        runs,
        tokenizer=split,
        tokenizer_name=tokenizer_name,
        scorer=scorer,
        scorer_name=scorer_name,
        student_format=student_format,
        samples=samples,
        nll_samples=nll_samples,
        close_scorer=True,
    )
    out = html or run.with_name(f"{runs[0].name}.report.html")
    if out.is_dir():
        raise ConfigError(f"the report's path {out} is a folder; give a file name such as report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.html, encoding="utf-8")
    return out, report
