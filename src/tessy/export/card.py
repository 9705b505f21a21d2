"""The dataset card written beside an export (``README.md``: what the Hub shows), and the push
of an export with its card to the Hugging Face Hub."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, MissingDependencyError
from ..records import Record, RunStats
from .filters import ExportFilters, RecordFilter, Verdicts

__all__ = ["CARD_MARK", "CardFacts", "card_path", "dataset_card", "push_to_hub"]

logger = logging.getLogger(__name__)

#: The line that marks a README.md as a card tessy wrote (and may write again).
CARD_MARK = "<!-- dataset card written by tessy export -->"


@dataclass
class CardFacts:
    """What the card says, gathered while the export runs (one record at a time)."""

    run: Path
    fmt: str
    data_file: str
    filters: ExportFilters
    config: dict[str, Any] | None = None
    config_hashes: Counter[str] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    exported: RunStats = field(default_factory=RunStats)
    verdicts_all: Verdicts = field(default_factory=Verdicts)
    verdicts_exported: Verdicts = field(default_factory=Verdicts)
    reasoning_field: str | None = None
    records: int = 0

    def add(self, record: Record, kept: bool) -> None:
        self.records += 1
        self.verdicts_all.add(record)
        if kept:
            self.exported.add(record)
            self.verdicts_exported.add(record)
            self.modes[record.mode or "?"] += 1
            self.config_hashes[record.config_hash] += 1


def _role(config: dict[str, Any] | None, name: str) -> str:
    role = (config or {}).get(name)
    if not isinstance(role, dict):
        return "unknown (no config beside the run)"
    how = f"{role.get('backend', '?')} backend, {role.get('format', '?')} format"
    model = role.get("model") or role.get("tokenizer")
    return f"{model} ({how})" if model else how


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def dataset_card(facts: CardFacts, kept: RecordFilter) -> str:
    """The card's Markdown, with the YAML header the Hub reads (its data file, tags)."""
    s = facts.exported
    left_out = [line for line in kept.summary() if not line.startswith("0 ")] or ["nothing"]
    thinking = (
        f"its own `{facts.reasoning_field}` field of the assistant message (`content` holds the answer)"
        if facts.reasoning_field
        else "inside the assistant message's `content`, in the student's format"
    )
    rows = [
        ("teacher", _role(facts.config, "teacher")),
        ("student", _role(facts.config, "student")),
        ("mode", ", ".join(f"{m} ({n})" for m, n in facts.modes.most_common()) or "–"),
        ("config hash", ", ".join(facts.config_hashes) or "–"),
        ("records in the run", f"{facts.records:,}"),
        ("records exported", f"{kept.kept:,}"),
        ("left out", "; ".join(left_out)),
        ("teacher token share", f"{s.teacher_share:.1%}" if s.written else "–"),
        ("teacher share of the thinking", f"{s.teacher_think_share:.1%}" if s.written else "–"),
        ("student token share", f"{1 - s.teacher_share:.1%}" if s.written else "–"),
        ("tokens (teacher + student)", f"{s.teacher_tokens:,} + {s.student_tokens:,}"),
        ("switches per sample", f"{s.switches_per_sample:.1f}"),
        ("pass rate, exported", facts.verdicts_exported.describe()),
        ("pass rate, whole run", facts.verdicts_all.describe()),
        ("filters", "; ".join(facts.filters.applied())),
        ("format", f"{facts.fmt}: `{facts.data_file}`"),
        ("thinking", thinking),
    ]
    table = "\n".join(f"| {k} | {_cell(v)} |" for k, v in rows)
    return (
        "---\n"
        "tags:\n- tessy\n- synthetic\n- sft\n- reasoning\n"
        "configs:\n- config_name: default\n  data_files:\n"
        f"  - split: train\n    path: {facts.data_file}\n"
        "---\n"
        f"{CARD_MARK}\n\n"
        f"# {Path(facts.data_file).name.split('.')[0]}\n\n"
        "Supervised fine-tuning data synthesised by tessy: a teacher model and the student take turns "
        "writing each response (TESSY, arXiv 2604.14164), so the data keeps the teacher's problem "
        "solving in the student's style. Each record keeps its spans (who wrote which text) and counters.\n\n"
        f"| | |\n|---|---|\n{table}\n"
    )


def card_path(folder: Path, data_file: Path) -> Path:
    """Where the card goes: ``README.md`` in ``folder``, unless a README.md that tessy did not
    write is there (it is never overwritten): then ``STEM.README.md`` beside the data file."""
    readme = folder / "README.md"
    if readme.exists():
        try:
            ours = CARD_MARK in readme.read_text(encoding="utf-8", errors="replace")
        except OSError:
            ours = False
        if not ours:
            other = folder / f"{data_file.name.split('.')[0]}.README.md"
            logger.warning("%s is not a tessy dataset card; the card is written to %s", readme, other)
            return other
    return readme


def push_to_hub(repo_id: str, files: list[tuple[Path, str]], *, private: bool = False, token: str | None = None) -> str:
    """Upload ``files`` (each a local path and its path in the repository) to the dataset
    repository ``repo_id`` in one commit, creating it if needed; returns its address."""
    if "/" not in repo_id.strip("/"):
        raise ConfigError(f"--push-to-hub takes a repository id such as user/my-data, not {repo_id!r}")
    try:
        from huggingface_hub import CommitOperationAdd, HfApi
    except ImportError as exc:
        raise MissingDependencyError("huggingface_hub", "datasets", "Pushing an export to the Hub") from exc
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.create_commit(
            repo_id,
            [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for path, name in files],
            commit_message="tessy export",
            repo_type="dataset",
        )
    except Exception as exc:  # the client raises HTTP, network and auth errors of many kinds
        raise DataError(
            f"pushing to the Hub dataset {repo_id} failed: {exc} "
            "(is the Hub reachable, and are you logged in: `hf auth login` or HF_TOKEN?)"
        ) from exc
    return f"https://huggingface.co/datasets/{repo_id}"
