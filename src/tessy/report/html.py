"""The report as one self-contained HTML file: inline CSS, plots as inline PNG, no script, and
every piece of model or user text escaped (it is shown as text, never run as markup).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any

from ..view import SPAN_CSS, render_spans
from .model import Report
from .plots import colour
from .runs import Run, RunFigures

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .55rem;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}thead th{background:#f4f4f4}
.note{color:#555;font-size:.88rem;max-width:60rem}
img{max-width:100%;border:1px solid #eee;margin:.4rem 0}
details{border:1px solid #ddd;border-radius:4px;margin:.4rem 0;padding:.3rem .6rem}
summary{cursor:pointer;font-weight:600}
.run{margin:.6rem 0 .9rem}.runname{font-weight:600;font-size:.9rem}
.prompt,.resp{white-space:pre-wrap;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.82rem;
background:#fafafa;border:1px solid #eee;padding:.45rem;border-radius:3px;overflow-wrap:anywhere}
.legend span{padding:0 .4rem;margin-right:.6rem}.swatch{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem}
.best{font-weight:700}
"""


def _num(value: float, digits: int = 1) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "–"
    return f"{value:,.{digits}f}"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], *, raw: bool = False) -> str:
    """A table; cells are escaped unless ``raw`` (for cells built here from escaped parts)."""
    cell = (lambda x: x) if raw else escape
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(png: str | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{png}">'


def _sample_note(figures: Sequence[RunFigures]) -> str:
    """What is counted over every record and what over the report's sample, where they differ."""
    if all(f.sampled >= f.stats.written for f in figures):
        return ""
    kept = ", ".join(f"{f.sampled:,} of {f.stats.written:,} in {f.name}" for f in figures)
    return (
        '<p class="note">Counts, shares, distributions, histograms and style-word rates are over every '
        "record. Similarity, PCA, the student's NLL and the responses shown use a sample of each run "
        f"({escape(kept)}), drawn by a seeded hash of the sample id, so runs on the same prompts keep the "
        "same ones.</p>"
    )


def _stats_section(figures: Sequence[RunFigures], hist_png: str | None) -> str:
    def dist(d: Any, digits: int = 1) -> str:
        return f"{_num(d.mean, digits)} (median {_num(d.median, 0)}, p90 {_num(d.p90, 0)}, max {_num(d.max, 0)})"

    stats = [f.stats for f in figures]
    metrics: list[tuple[str, list[str]]] = [
        ("mode", [f.mode for f in figures]),
        ("samples written", [f"{s.written:,}" for s in stats]),
        ("samples failed", [f"{s.n_failed:,}" for s in stats]),
        ("teacher token share", [f"{s.teacher_share:.1%}" for s in stats]),
        ("teacher share of thinking", [f"{s.teacher_think_share:.1%}" for s in stats]),
        ("student token share", [f"{1 - s.teacher_share:.1%}" if s.written else "–" for s in stats]),
        ("switches per sample", [dist(f.switches) for f in figures]),
        ("response tokens per sample", [dist(f.response_tokens) for f in figures]),
        ("response characters per sample", [dist(f.response_chars, 0) for f in figures]),
        ("requests per sample", [dist(f.requests_per_sample) for f in figures]),
        ("requests in all", [f"{s.requests:,}" for s in stats]),
        ("failed requests", [f"{s.failed_requests:,}" for s in stats]),
        ("discarded tokens", [f"{s.discarded_tokens:,} ({s.discarded_per_kept:.2f} per kept token)" for s in stats]),
        (
            "guards fired",
            [", ".join(f"{k}: {v}" for k, v in sorted(s.guards.items())) or "none" for s in stats],
        ),
    ]
    if any(f.damaged_lines for f in figures):
        metrics.append(("damaged lines skipped", [str(f.damaged_lines) for f in figures]))
    parts = [
        "<h2>Runs</h2>",
        '<p class="note">Token counts are the engine\'s: each role counts in its own tokenizer. '
        "Discarded tokens were generated and thrown away past a cut or an end of thinking.</p>",
        _sample_note(figures),
        _table(["", *(f.name for f in figures)], [(k, *v) for k, v in metrics]),
    ]
    reasons = sorted({r for s in stats for r in s.failed})
    parts.append("<h3>Failures by reason</h3>")
    if reasons:
        parts.append(
            _table(
                ["reason", *(f.name for f in figures)],
                [(r, *(str(s.failed.get(r, 0)) for s in stats)) for r in reasons],
            )
        )
    else:
        parts.append('<p class="note">No sample failed.</p>')
    parts.append(_img(hist_png, "distributions of switches, lengths and requests per sample"))
    return "".join(parts)


def _pct(part: int, whole: int) -> str:
    return f"{part:,} ({part / whole:.1%})" if whole else "–"


def _quality_section(figures: Sequence[RunFigures]) -> str:
    """Pass rates, pass@n, guards and what an export keeps, per run and mode."""
    head = [
        "run",
        "mode",
        "records",
        "judged",
        "passed (of judged)",
        "not judged",
        "not verified",
        "samples per prompt",
        "pass@1",
        "pass@n",
        "guards fired",
        "a default export keeps",
    ]
    rows = []
    for f in figures:
        for q in f.quality:
            v, at = q.verdicts, q.pass_at()
            if at is None:
                per_prompt = p1 = pn = "–"
            else:
                per_prompt = f"{at.min_n}" if at.min_n == at.max_n else f"{at.min_n}–{at.max_n}"
                p1 = f"{at.pass_at_1:.1%} of {at.prompts:,} prompts"
                pn = f"{at.pass_at_n:.1%} (n = {per_prompt})" if at.max_n > 1 else "– (one sample per prompt)"
            guards = ", ".join(f"{k}: {n:,}" for k, n in sorted(q.guards.items())) or "none"
            rows.append(
                (
                    f.name,
                    q.mode,
                    f"{q.records:,}",
                    f"{v.judged:,}",
                    _pct(v.passed, v.judged),
                    f"{v.unjudged:,}",
                    f"{v.unverified:,}",
                    per_prompt,
                    p1,
                    pn,
                    guards,
                    _pct(q.export_keeps, q.records),
                )
            )
    return "".join(
        [
            "<h2>Answers and export</h2>",
            '<p class="note">Pass rates count judged answers only: an answer that could not be judged '
            "(no reference, the sandbox did not start) and a record never verified are counted apart, never as "
            "wrong. Samples of one prompt share a <code>prompt_id</code> field, or an id <code>ID#k</code>. "
            "pass@1 is the mean over prompts of the share of its judged samples that passed; pass@n the share of "
            "prompts with at least one passing sample. A default <code>tessy export</code> leaves out records in "
            "which a guard fired; failed samples are in the failures table, not here.</p>",
            _table(head, rows),
        ]
    )


def _style_section(report: Report) -> str:
    parts = ["<h2>Style</h2>"]
    parts.append(
        f'<p class="note">Responses are split with {escape(report.tokenizer_name)}. '
        "TF-IDF vectors are fitted on the responses of every run; similarity is the mean cosine between "
        "the responses of two runs to the same prompt (runs are matched by sample id).</p>"
    )
    sim = report.similarity
    if sim is not None and sim.common == 0 and sim.shared:
        parts.append(
            f'<p class="note">The runs share {sim.shared:,} prompts, but the report\'s samples of the runs '
            "hold none of them in common (the runs overlap too little), so they are not compared.</p>"
        )
    elif sim is None or sim.common == 0:
        parts.append('<p class="note">The runs share no prompts, so they are not compared.</p>')
    else:
        rows = []
        for i, name in enumerate(sim.names):
            rows.append((escape(name), *(_num(v, 3) for v in sim.matrix[i])))
        if sim.common < sim.shared:
            used = f"{sim.common:,} of {sim.shared:,} shared prompts, a seeded random sample"
        else:
            used = f"{sim.common:,} shared prompts"
        parts.append(f"<h3>TF-IDF cosine similarity ({used})</h3>")
        parts.append(_table(["", *sim.names], rows, raw=True))
        students = [f.name for f in report.figures if f.mode == "student-only"]
        if students:
            parts.append(
                f'<p class="note">The column of {escape(students[0])} (the student writing alone) says how '
                "close each run is to the student's own style.</p>"
            )
    if report.pca_png:
        parts.append("<h3>PCA of TF-IDF vectors</h3>")
        parts.append(_img(report.pca_png, "PCA of TF-IDF vectors of responses, with run centroids"))
    parts.append("<h3>Style words per 1,000 tokens of thinking</h3>")
    if report.style_words:
        rows = [(w, *(_num(r.get(w, 0.0), 2) for r in report.style)) for w in report.style_words]
        parts.append(_table(["word or phrase", *(f.name for f in report.figures)], rows))
        parts.append(_img(report.style_png, "style words per thousand tokens"))
    else:
        parts.append('<p class="note">No style word occurs in any run.</p>')
    return "".join(parts)


def _comparison_section(report: Report) -> str:
    from .table import comparison, comparison_cells

    head, rows = comparison_cells(comparison(report))
    return "".join(
        [
            "<h2>Side by side</h2>",
            '<p class="note">Shares, lengths and costs count all records (cost: requests and generated '
            "tokens, kept and discarded, per token kept in the data; failed samples' requests included). "
            "Similarity is to the student-only run's responses to the same prompts; NLL, rank, "
            "Rank-Surprisal Ratio (lower suits the student better) and the share outside the student's "
            "top-k are the student's, on the thinking (see below). Pass rates count records whose "
            "answer was judged.</p>",
            _table(head, rows),
        ]
    )


def _nll_section(report: Report) -> str:
    parts = ["<h2>Student negative log-likelihood, ranks and Rank-Surprisal Ratio of the thinking</h2>"]
    if not report.nll:
        parts.append(f'<p class="note">{escape(report.nll_note)}</p>')
        return "".join(parts)
    parts.append(
        f'<p class="note">Scored by {escape(report.scorer_name)} after the student\'s own prompt '
        "(its format, thinking opened); nats per token, lower is closer to what the student would write "
        "itself. Runs are scored on the same prompts where they share them.</p>"
    )
    first = report.nll[0]
    parts.append(
        f"<p class=\"note\">Rank: each token's 1-based rank among the student's predictions, clipped at "
        f"{first.rank_clip}; mean over samples of each sample's mean. RSR (Rank-Surprisal Ratio, Yang et al., "
        "arXiv 2601.14249): mean rank over mean NLL of the same samples; lower suits the student better. "
        f"Outside top-{first.top_k}: the share of tokens the student ranks below its top {first.top_k}. "
        "Censored: tokens a server ranked only as beyond the alternatives it returned; they count as the "
        "clip in the rank and the RSR (an upper bound; the lower bound is shown beside it).</p>"
    )
    finite = [n.nll for n in report.nll if math.isfinite(n.nll)]
    best = min(finite) if finite else None
    rows = []
    for n in report.nll:
        mark = ' class="best"' if best is not None and n.nll == best else ""
        rows.append(
            (
                escape(n.name),
                f"<span{mark}>{_num(n.nll, 3)}</span>",
                _num(n.perplexity, 2),
                _num(n.sample_mean, 3),
                f"{n.samples:,}",
                f"{n.tokens:,}",
                str(n.truncated),
                _num(n.rank, 2),
                _num(n.rank_low, 2),
                _num(n.rsr, 3),
                f"{n.outside_top_k:.1%}" if math.isfinite(n.outside_top_k) else "–",
                f"{n.censored:.1%}" if n.ranked_tokens else "–",
            )
        )
    parts.append(
        _table(
            [
                "run",
                "NLL / token",
                "perplexity",
                "mean of samples",
                "samples",
                "tokens",
                "truncated",
                "mean rank",
                "lower bound",
                "RSR",
                f"outside top-{first.top_k}",
                "censored",
            ],
            rows,
            raw=True,
        )
    )
    return "".join(parts)


def _viewer_section(runs: Sequence[Run], ids: Sequence[str]) -> str:
    parts = [
        "<h2>Responses</h2>",
        '<p class="legend"><span class="span teacher">teacher</span><span class="span student">student</span>'
        '<span class="span student answer">answer (outlined)</span> Hover a span for its source and length.</p>',
    ]
    if not ids:
        parts.append('<p class="note">No response to show.</p>')
    indexes = [r.by_id for r in runs]
    for sample_id in ids:
        first = next(ix[sample_id] for ix in indexes if sample_id in ix)
        prompt = "\n\n".join(f"[{m['role']}] {m['content']}" for m in first.prompt)
        preview = prompt.replace("\n", " ")[:110]
        parts.append(f"<details><summary>{escape(sample_id)}: {escape(preview)}</summary>")
        parts.append(f'<div class="prompt">{escape(prompt)}</div>')
        for i, (run, ix) in enumerate(zip(runs, indexes, strict=True)):
            record = ix.get(sample_id)
            swatch = f'<span class="swatch" style="background:{colour(i)}"></span>'
            parts.append(f'<div class="run"><div class="runname">{swatch}{escape(run.name)} ({escape(run.mode)})</div>')
            if record is None:
                failure = run.failures.get(sample_id)
                if failure:
                    why = f"failed: {failure.failure}"
                elif sample_id in run.ids:
                    why = "in this run, but not in the report's sample of it"
                else:
                    why = "not in this run"
                parts.append(f'<div class="note">{escape(str(why))}</div></div>')
                continue
            parts.append(f'<div class="resp">{render_spans(record.spans)}</div></div>')
        parts.append("</details>")
    return "".join(parts)


def render_html(report: Report) -> str:
    from ..version import __version__

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs_rows = [
        (
            f'<span class="swatch" style="background:{colour(i)}"></span>{escape(r.name)}',
            escape(str(r.path)),
            escape(r.mode),
        )
        for i, r in enumerate(report.runs)
    ]
    body = [
        "<h1>tessy report</h1>",
        f'<p class="note">Made by tessy {escape(__version__)} on {escape(stamp)}.</p>',
        _table(["run", "file", "mode"], runs_rows, raw=True),
        _comparison_section(report),
        _stats_section(report.figures, report.hist_png),
        _quality_section(report.figures),
        _style_section(report),
        _nll_section(report),
        _viewer_section(report.runs, report.viewer_ids),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>tessy report: {escape(', '.join(r.name for r in report.runs))}</title>"
        f"<style>{_CSS}{SPAN_CSS}</style></head><body>" + "".join(body) + "</body></html>\n"
    )
