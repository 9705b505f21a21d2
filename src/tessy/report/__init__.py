"""``tessy report``: judge the data before fine-tuning on it.

One self-contained HTML file with, per run: who wrote how much (teacher and student token
shares), switches per sample, response lengths, requests, discarded tokens and failures by
reason; between runs on the same prompts (matched by sample id): TF-IDF cosine similarity of
responses in the student's tokenizer, a PCA plot of the TF-IDF vectors with run centroids, and
style words per thousand tokens; with a student that can score text, in one scoring pass, its
negative log-likelihood of each run's thinking, the tokens' ranks, the Rank-Surprisal Ratio and
the share of tokens outside its top-k (see :mod:`.nll`); every run side by side in one table
(see :mod:`.table`: shares, similarity to student-only, the student's scores, pass rates, length,
cost); and a viewer colouring teacher and student spans.

Memory is bounded, whatever a run's size: each run is read in one pass, in which counters,
distributions and style words take in every record and a sample of at most
:data:`~.sampling.SAMPLE_SIZE` records is kept (drawn alike in every run, see :mod:`.sampling`)
for the similarity, the PCA, the NLL and the viewer; the report says when it sampled.

Needs the ``report`` extra (matplotlib, scikit-learn); the student's tokenizer and an
in-process scoring model need the ``hf`` extra.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from ..backends.base import Scorer
from ..config import SynthConfig
from ..errors import BackendError, ConfigError, TessyError
from ..formats import Format, get_format
from ..records import Record
from .model import Report
from .nll import RANK_CLIP, TOP_K, RunNLL, run_nll
from .runs import Run, RunFigures, load_run, run_figures
from .sampling import SAMPLE_SIZE
from .style import (
    STYLE_WORDS,
    TextTokenizer,
    hf_text_tokenizer,
    pca_points,
    tfidf_similarity,
    word_tokenizer,
)
from .table import ComparisonRow, comparison, comparison_json

__all__ = [
    "ComparisonRow",
    "Report",
    "Run",
    "RunFigures",
    "RunNLL",
    "build_report",
    "comparison",
    "comparison_json",
    "load_run",
    "write_report",
]

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
    """Samples to show, from the runs' samples: those every run kept first (to compare), then the
    first run's others."""
    sets = [set(r.by_id) for r in runs]
    common = set.intersection(*sets) if sets else set()
    order = [rec.id for rec in runs[0].records] if runs else []
    ids = [i for i in order if i in common][:n]
    ids += [i for i in order if i not in common][: n - len(ids)]
    return ids


def _compare(report: Report, split: TextTokenizer) -> None:
    """TF-IDF similarity and PCA on the runs' samples (every record of a run no larger than its
    sample): the ids that every run kept are a uniform sample of the ids they share."""
    from . import plots

    runs = report.runs
    vocabulary: dict[str, str] = {}  # one string per distinct token: a sample's tokens cost a pointer each

    def tokens(rec: Record) -> list[str]:
        return [vocabulary.setdefault(t, t) for t in split(rec.response or "")]

    sampled = [{rec.id: tokens(rec) for rec in r.records} for r in runs]
    compared = set.intersection(*(set(d) for d in sampled))
    shared = len(set.intersection(*(r.ids for r in runs)))
    names = [r.name for r in runs]
    report.similarity = tfidf_similarity(names, [{i: d[i] for i in compared} for d in sampled], shared=shared)
    points = pca_points([list(d.values()) for d in sampled])
    if points is not None:
        report.pca_png = plots.pca_figure(names, points)


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
    top_k: int = TOP_K,
    rank_clip: int = RANK_CLIP,
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
    digests = [r.digested(split) for r in runs]
    figures = [run_figures(r) for r in runs]
    report = Report(
        list(runs), figures, tokenizer_name if tokenizer else "a word tokenizer (lower-cased words and punctuation)"
    )
    names = [r.name for r in runs]

    _compare(report, split)

    rates = [d.style.rates() for d in digests]
    report.style = rates
    ranked = sorted(STYLE_WORDS, key=lambda w: max(r[w] for r in rates), reverse=True)
    report.style_words = [w for w in ranked if max(r[w] for r in rates) > 0][:TOP_STYLE_WORDS]
    if report.style_words:
        report.style_png = plots.style_figure(names, report.style_words, rates)
    report.hist_png = plots.histograms(
        names,
        [
            ("switches per sample", [d.switches.counts for d in digests]),
            ("response length (report tokens)", [d.report_tokens.counts for d in digests]),
            ("requests per sample", [d.requests.counts for d in digests]),
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
                return await run_nll(runs, s, fmt, max_samples=nll_samples, top_k=top_k, rank_clip=rank_clip)
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
    student_config: Path | SynthConfig | None = None,
    tokenizer: str | None = None,
    score_model: str | None = None,
    samples: int = 20,
    nll_samples: int = 32,
    top_k: int = TOP_K,
) -> tuple[Path, Report]:
    """Read the runs, build the report and write it (by default beside ``run`` as ``RUN.report.html``).

    ``student_config`` is a tessy run config: its student role gives the format, the tokenizer
    (a ``tokenizer`` field, where the role has one) and, if its backend can score text, the
    scorer. ``tokenizer`` (a catalogued model, a GGUF file or a model folder) and
    ``score_model`` (the same, scored in-process with transformers) override it. ``top_k``: the
    student's top-k for the share of tokens outside it (and the alternatives a server is asked for).
    """
    student_format: Format | None = None
    scorer: Scorer | None = None
    scorer_name = ""
    tokenizer_ref = tokenizer
    if student_config is not None:
        from ..build import build_backend, build_format, build_tokenizer
        from ..config import load_config

        config = student_config if isinstance(student_config, SynthConfig) else load_config(student_config)
        role = config.student
        where = "the run config" if isinstance(student_config, SynthConfig) else student_config.name
        backend = build_backend(role) if score_model is None else None
        # The student's format as synthesis builds it: its options and its tokenizer's chat template.
        student_format = build_format(role, build_tokenizer(role, backend))
        tokenizer_ref = tokenizer_ref or role.tokenizer or (role.model if role.backend == "hf" else None)
        if backend is not None:
            if backend.supports_scoring:
                scorer, scorer_name = backend, f"the student of {where} ({role.backend} backend)"
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
    # One pass per run, counting in the report's tokenizer; the sample holds what the viewer
    # and the NLL ask for, at least.
    size = max(SAMPLE_SIZE, samples, nll_samples)
    paths = [run, *compare]
    try:
        runs = [
            load_run(p, name, tokenizer=split or word_tokenizer, sample_size=size)
            for p, name in zip(paths, _unique_names(paths), strict=True)
        ]
    except BaseException:
        if scorer is not None:
            asyncio.run(scorer.aclose())
        raise
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
        top_k=top_k,
    )
    out = html or run.with_name(f"{runs[0].name}.report.html")
    if out.is_dir():
        raise ConfigError(f"the report's path {out} is a folder; give a file name such as report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.html, encoding="utf-8")
    return out, report
