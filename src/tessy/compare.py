"""Every way of making the data, on the same prompts, side by side.

:func:`compare` runs one synthesis per mode (the run config with its ``mode`` replaced) into one
folder, ``DIR/MODE.jsonl`` each, then writes the side-by-side report of them all::

    result = tessy.compare.compare("run.yaml", ["tessy", "teacher-only", "student-only"],
                                   prompts="prompts.jsonl", output_dir="cmp/", score_model="smollm2-135m")
    result.rows          # one ComparisonRow per mode: shares, similarity, NLL, rank, RSR, cost

Each mode's file resumes as ``tessy synth`` does: a rerun skips the ids a mode has finished, so
an interrupted comparison picks up where it stopped and an extended one (more prompts, more
modes) runs only what is new. Any mode of :class:`~tessy.records.Mode` is accepted.

The report (``DIR/report.html`` and ``DIR/report.json``) is :func:`tessy.report.write_report`
on the modes' files, in the order given; the student of the run config scores the thinking
when its backend can, or ``score_model`` in-process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import SynthConfig, load_config
from .errors import ConfigError
from .prompts import Prompts
from .records import Mode
from .report import Report, write_report
from .report.nll import TOP_K
from .report.table import ComparisonRow, comparison, comparison_json
from .synth import ConfigLike, Progress, RunSummary, synthesize

__all__ = ["CompareResult", "compare", "parse_modes"]

logger = logging.getLogger(__name__)


def parse_modes(modes: str | Sequence[str | Mode]) -> list[Mode]:
    """Modes from a comma-separated list or a sequence, each once, in the order given."""
    names = modes.split(",") if isinstance(modes, str) else list(modes)
    out: list[Mode] = []
    for name in names:
        value = name.value if isinstance(name, Mode) else name.strip()
        if not value:
            continue
        try:
            mode = Mode(value)
        except ValueError:
            known = ", ".join(m.value for m in Mode)
            raise ConfigError(f"{value!r} is not a mode; the modes are: {known}") from None
        if mode not in out:
            out.append(mode)
    if not out:
        raise ConfigError("name at least one mode to compare (e.g. tessy,teacher-only,student-only)")
    return out


@dataclass
class CompareResult:
    """What :func:`compare` made: each mode's run and the report on them all."""

    output_dir: Path
    modes: list[Mode]
    summaries: dict[str, RunSummary]
    report: Report
    html: Path
    json: Path

    @property
    def rows(self) -> list[ComparisonRow]:
        return comparison(self.report)

    @property
    def too_many_failures(self) -> list[str]:
        """The modes whose run failed more than ``max_failure_rate`` allows."""
        return [m for m, s in self.summaries.items() if s.too_many_failures]


def compare(
    config: ConfigLike,
    modes: str | Sequence[str | Mode],
    *,
    output_dir: str | Path,
    prompts: Prompts | None = None,
    limit: int | None = None,
    score_model: str | None = None,
    tokenizer: str | None = None,
    samples: int = 20,
    nll_samples: int = 32,
    top_k: int = TOP_K,
    progress: Callable[[Mode], Progress | None] | None = None,
) -> CompareResult:
    """Run every mode of ``modes`` on the same prompts into ``output_dir`` and report on them.

    ``prompts`` replaces the config's ``data`` source; ``limit`` its ``limit``. Every mode's
    config is validated before the first runs, so a mode the setup cannot do is refused before
    any time is spent. ``progress(mode)`` may return a progress callback for that mode's run.
    ``score_model``, ``tokenizer``, ``samples``, ``nll_samples`` and ``top_k`` are
    :func:`~tessy.report.write_report`'s; the report splits text in ``score_model``'s tokenizer
    when no ``tokenizer`` is given (both are the student's).
    """
    base = config if isinstance(config, SynthConfig) else load_config(config)
    chosen = parse_modes(modes)
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"the comparison's output {folder} is a file; give a folder")
    overrides: dict[str, object] = {} if limit is None else {"limit": limit}
    configs = {mode: load_config(base, {**overrides, "mode": mode.value}) for mode in chosen}
    if prompts is None and base.data.source() is None:
        raise ConfigError("say where prompts come from: --input FILE, or data.input / data.dataset in the config")
    folder.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, RunSummary] = {}
    paths: list[Path] = []
    for mode, mode_config in configs.items():
        path = folder / f"{mode.value}.jsonl"
        logger.info("compare: running %s into %s", mode.value, path)
        summary = synthesize(mode_config, prompts=prompts, output=path, progress=progress(mode) if progress else None)
        summaries[mode.value] = summary
        paths.append(path)
        if summary.too_many_failures:
            logger.warning("compare: %s failed on %.1f%% of its inputs", mode.value, 100 * summary.failure_rate)
    html, report = write_report(
        paths[0],
        paths[1:],
        html=folder / "report.html",
        student_config=base,
        tokenizer=tokenizer or score_model,
        score_model=score_model,
        samples=samples,
        nll_samples=nll_samples,
        top_k=top_k,
    )
    json_path = folder / "report.json"
    payload = {"modes": [m.value for m in chosen], **comparison_json(report)}
    payload["summaries"] = {m: s.to_dict() for m, s in summaries.items()}
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return CompareResult(folder, chosen, summaries, report, html, json_path)
