"""The report's figures, drawn with matplotlib (Agg) and returned as base64 PNG for inline
``<img>`` tags: the HTML needs no network and no script, and a PNG cannot carry markup.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import MissingDependencyError

__all__ = ["histograms", "pca_figure", "style_figure"]

#: Colours of runs, in order (colour-blind safe).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "report", "The report's plots") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _label(text: str) -> str:
    """Text shown as it is: matplotlib would read ``$...$`` as mathematics."""
    return text.replace("$", r"\$")


def pca_figure(names: Sequence[str], points: Sequence[Sequence[tuple[float, float]]]) -> str:
    """Each run's responses in the plane of the first two principal components, with centroids."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for i, (name, pts) in enumerate(zip(names, points, strict=True)):
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.scatter(xs, ys, s=14, alpha=0.45, color=colour(i), label=_label(f"{name} ({len(pts)})"))
        cx, cy = sum(xs) / len(xs), sum(ys) / len(ys)
        ax.scatter([cx], [cy], s=220, marker="X", color=colour(i), edgecolors="black", linewidths=1.2)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("TF-IDF of responses (X: run centroid)")
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def style_figure(names: Sequence[str], words: Sequence[str], rates: Sequence[dict[str, float]]) -> str:
    """Grouped horizontal bars: style words per thousand tokens in each run."""
    plt = _pyplot()
    height = max(2.5, 0.32 * len(words) * max(1, len(names)) ** 0.5 + 1)
    fig, ax = plt.subplots(figsize=(7, height))
    n = max(1, len(names))
    bar = 0.8 / n
    for i, (name, r) in enumerate(zip(names, rates, strict=True)):
        ys = [j + i * bar for j in range(len(words))]
        ax.barh(ys, [r.get(w, 0.0) for w in words], height=bar, color=colour(i), label=_label(name))
    ax.set_yticks([j + 0.4 - bar / 2 for j in range(len(words))])
    ax.set_yticklabels([_label(w) for w in words], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("occurrences per 1,000 tokens of thinking")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def histograms(names: Sequence[str], series: Sequence[tuple[str, Sequence[Mapping[int, int]]]]) -> str:
    """One panel per ``(title, counts per run)``, runs overlaid; a run's counts map each value
    to how many samples had it (the histogram of the values themselves, drawn with weights)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (title, per_run) in zip(axes[0], series, strict=True):
        everything = [v for counts in per_run for v, c in counts.items() if c]
        if not everything:
            ax.set_visible(False)
            continue
        lo, hi = min(everything), max(everything)
        bins = 20 if hi > lo else 1
        for i, (name, counts) in enumerate(zip(names, per_run, strict=True)):
            if any(counts.values()):
                ax.hist(
                    [float(v) for v in counts],
                    bins=bins,
                    range=(lo, hi if hi > lo else lo + 1),
                    weights=list(counts.values()),
                    alpha=0.5,
                    color=colour(i),
                    label=_label(name),
                )
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    return _png(fig)
