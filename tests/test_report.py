"""``tessy report``: statistics, style measures, NLL and the span viewer, in one safe HTML file."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from tessy import load_config, synthesize
from tessy.backends import Prompt, ScoreRequest
from tessy.cli import main
from tessy.fakes import ScriptedBackend
from tessy.report import build_report, load_run, write_report
from tessy.report.runs import run_stats
from tessy.report.style import style_rates, tfidf_similarity, word_tokenizer

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "examples" / "offline.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The offline example's prompts synthesised in three modes."""
    out = tmp_path_factory.mktemp("runs")
    paths = {}
    for mode in ("tessy", "teacher-only", "student-only"):
        path = out / f"{mode}.jsonl"
        synthesize(load_config(OFFLINE, [f"data.output={path}", f"mode={mode}"]))
        paths[mode] = path
    return paths


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def record(sample_id: str, prompt: str, spans: list[tuple[str, str, str]], **stats: Any) -> dict[str, Any]:
    think = "".join(t for s, p, t in spans if p == "think")
    answer = "".join(t for s, p, t in spans if p == "answer")
    return {
        "id": sample_id,
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": f"<think>\n{think}\n</think>\n\n{answer}"},
        ],
        "mode": "tessy",
        "spans": [{"source": s, "phase": p, "text": t, "tokens": len(t.split())} for s, p, t in spans],
        "stats": {
            "teacher_tokens": 10,
            "student_tokens": 5,
            "switches": 2,
            "requests": 4,
            "discarded_tokens": 7,
            **stats,
        },
        "config_hash": "h",
    }


def images(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_report_on_three_modes_has_every_part(runs: dict[str, Path], tmp_path: Path) -> None:
    out, report = write_report(
        runs["tessy"],
        [runs["teacher-only"], runs["student-only"]],
        html=tmp_path / "r.html",
        student_config=OFFLINE,
    )
    html = out.read_text(encoding="utf-8")
    # Per-run statistics.
    for label in (
        "teacher token share",
        "student token share",
        "switches per sample",
        "response tokens per sample",
        "requests per sample",
        "discarded tokens",
        "Failures by reason",
    ):
        assert label in html
    shares = {f.name: f.stats.teacher_share for f in report.figures}
    assert shares["teacher-only"] == 1.0 and shares["student-only"] == 0.0 and 0 < shares["tessy"] < 1
    # Style measures between runs on the same prompts.
    assert report.similarity is not None and report.similarity.common == 5
    m = report.similarity.matrix
    assert m[0][0] == pytest.approx(1.0) and 0 < m[0][2] < 1
    # The cooperative run sits closer to the student's style than the teacher alone does.
    assert m[0][2] > m[1][2]
    assert "TF-IDF cosine similarity" in html and "PCA of TF-IDF vectors" in html
    assert "Style words per 1,000 tokens" in html and report.style_words
    # Plots are inline PNGs: no file or network is needed to see them.
    pngs = images(html)
    assert len(pngs) == 3 and all(p.startswith(b"\x89PNG") for p in pngs)
    assert "http://" not in html and "https://" not in html
    # The student (a scripted fake that knows its own script) finds its own run the most likely.
    assert report.nll is not None
    nll = {n.name: n.nll for n in report.nll}
    assert nll["student-only"] < nll["tessy"] < nll["teacher-only"]
    # The span viewer colours both roles.
    assert 'class="span teacher"' in html and 'class="span student"' in html and "add-1" in html


def test_model_text_is_shown_as_text_never_run(tmp_path: Path) -> None:
    evil = "<script>alert('x')</script>"
    run = write_jsonl(
        tmp_path / "evil<script>.jsonl",
        [
            record(
                f"id-{evil}",
                f"Prompt {evil} & more",
                [
                    ("student", "think", f"Okay {evil}"),
                    ("teacher", "think", ' "quoted" <b>bold</b>'),
                    ("student", "answer", evil),
                ],
            )
        ],
    )
    write_jsonl(tmp_path / "evil<script>.failed.jsonl", [{"id": "f", "failure": f"request_failed: {evil}"}])
    out, _ = write_report(run, html=tmp_path / "r.html")
    html = out.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "<b>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html


def test_failures_by_reason_come_from_the_sidecar(tmp_path: Path) -> None:
    run = write_jsonl(
        tmp_path / "out.jsonl", [record("a", "p", [("student", "think", "Okay"), ("student", "answer", "x")])]
    )
    write_jsonl(
        tmp_path / "out.failed.jsonl",
        [
            {"id": "b", "failure": "repetition: degenerate repetition", "stats": {"requests": 5}},
            {"id": "c", "failure": "request_failures: 4 failed requests"},
            {"id": "d", "failure": "repetition: again"},
            {"id": "a", "failure": "token_budget: it failed once, then a retry finished it"},
            {"id": "out.jsonl:3", "failure": "bad_input: not valid JSON"},
        ],
    )
    stats = run_stats(load_run(run))
    assert stats.n_failed == 4
    assert stats.failed == {"repetition": 2, "request_failures": 1, "bad_input": 1}
    assert stats.requests == 4 + 5
    html = build_report([load_run(run)]).html
    assert "repetition" in html and "request_failures" in html and "token_budget" not in html


def test_runs_without_shared_prompts_are_not_compared(tmp_path: Path) -> None:
    a = write_jsonl(
        tmp_path / "a.jsonl", [record("1", "p", [("teacher", "think", "x = 1"), ("student", "answer", "ok")])]
    )
    b = write_jsonl(
        tmp_path / "b.jsonl", [record("2", "q", [("teacher", "think", "y = 2"), ("student", "answer", "ok")])]
    )
    report = build_report([load_run(a), load_run(b)])
    assert report.similarity is not None and report.similarity.common == 0
    assert "share no prompts" in report.html
    assert "Not computed" in report.html  # no scorer


def test_same_stem_runs_get_distinct_names(runs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "tessy.jsonl"
    other.write_bytes(runs["tessy"].read_bytes())
    _, report = write_report(runs["tessy"], [other], html=tmp_path / "r.html")
    assert [r.name for r in report.runs] == ["tessy", "tessy (2)"]


def test_similarity_and_style_rates() -> None:
    docs = [{"1": ["a", "b", "c"], "2": ["x", "y"]}, {"1": ["a", "b", "c"], "2": ["z"]}]
    sim = tfidf_similarity(["p", "q"], docs)
    assert sim.common == 2
    assert sim.matrix[0][1] == pytest.approx(0.5)  # one identical pair, one disjoint pair
    rates = style_rates(["Okay, so wait. Let me see... okay", "Hmm, so-called"], 1000, ["okay", "so", "let me", "hmm"])
    assert rates == {"okay": 2.0, "so": 1.0, "let me": 1.0, "hmm": 1.0}
    assert word_tokenizer("Okay, so x=1") == ["okay", ",", "so", "x", "=", "1"]


async def test_scripted_backend_scores_its_own_text_as_likely() -> None:
    fake = ScriptedBackend.cycling([" Okay, so let me see"])
    own = await fake.score(ScoreRequest(Prompt.of("p"), " Okay, so"))
    other = await fake.score(ScoreRequest(Prompt.of("p"), " 17 + 25"))
    assert len(own) == 3 and own.nll == pytest.approx(-math.log(0.5))
    assert other.nll > own.nll


def test_cli_report_writes_beside_the_run(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(runs["tessy"]), "--compare", str(runs["student-only"]), "--samples", "2"]) == 0
    path = runs["tessy"].with_name("tessy.report.html")
    assert path.is_file()
    assert str(path) in capsys.readouterr().out
    assert path.read_text(encoding="utf-8").count("<details>") == 2


def test_cli_report_on_a_missing_run_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope.jsonl")]) == 1
    assert "does not exist" in " ".join(capsys.readouterr().err.split())


@pytest.mark.real
@pytest.mark.slow
def test_report_with_a_real_student_tokenizer_and_scorer(runs: dict[str, Path], tmp_path: Path) -> None:
    """SmolLM2-135M (a catalogued GGUF) splits the text and scores the thinking in-process."""
    pytest.importorskip("transformers")
    from tessy import models

    try:
        models.resolve("smollm2-135m")
    except models.MissingModelError:
        pytest.skip("SmolLM2 is not installed: tessy models install smollm2-135m")
    _, report = write_report(
        runs["tessy"],
        [runs["teacher-only"], runs["student-only"]],
        html=tmp_path / "r.html",
        tokenizer="smollm2-135m",
        score_model="smollm2-135m",
        nll_samples=2,
    )
    assert "the tokenizer of smollm2-135m" in report.html
    assert report.nll is not None and all(n.samples == 2 and math.isfinite(n.nll) and n.nll > 0 for n in report.nll)


def test_damaged_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    good = record("a", "p", [("student", "think", "Okay"), ("student", "answer", "x")])
    run = tmp_path / "out.jsonl"
    run.write_text(json.dumps(good) + '\n{"id": "torn", "messa\nnot json\n[1, 2]\n', encoding="utf-8")
    loaded = load_run(run)
    assert [r.id for r in loaded.records] == ["a"] and loaded.damaged_lines == 3
    assert "damaged lines skipped" in build_report([loaded]).html


def served_student_config(tmp_path: Path, url: str, fmt: str = "format: qwen3") -> Path:
    """The offline example with its student behind an OpenAI-compatible (vLLM) server at ``url``."""
    text = OFFLINE.read_text(encoding="utf-8")
    student = f"student:\n  backend: openai\n  server: vllm\n  model: s\n  {fmt}\n  endpoints: [{url}]\n\n"
    config = tmp_path / "student.yaml"
    config.write_text(text[: text.index("student:")] + student + text[text.index("teacher:") :], encoding="utf-8")
    return config


def test_a_student_server_that_scores_gives_the_nll(runs: dict[str, Path], tmp_path: Path) -> None:
    """``--student CONFIG`` whose student is an OpenAI-compatible server: the report scores each
    run's thinking through it (echo with logprobs, as vLLM answers)."""
    from fault_server import FaultServer

    server = FaultServer()
    try:
        config = served_student_config(tmp_path, server.url)
        _, report = write_report(runs["tessy"], [runs["student-only"]], html=tmp_path / "r.html", student_config=config)
    finally:
        server.close()
    assert report.nll is not None and [n.name for n in report.nll] == ["tessy", "student-only"]
    assert all(n.samples > 0 and math.isfinite(n.nll) and n.nll > 0 for n in report.nll)
    assert "openai backend" in report.html and "Not computed" not in report.html
    scored = [r["body"] for r in server.requests]
    assert scored and all(b["echo"] and b["max_tokens"] == 1 for b in scored)
    assert all("<think>" in b["prompt"] for b in scored)  # after the student's own prompt


def test_a_student_server_that_cannot_score_is_said_once(runs: dict[str, Path], tmp_path: Path) -> None:
    from fault_server import FaultServer

    server = FaultServer(default="noecho")
    try:
        config = served_student_config(tmp_path, server.url)
        _, report = write_report(runs["tessy"], html=tmp_path / "r.html", student_config=config)
    finally:
        server.close()
    assert report.nll is None and len(server.requests) == 1  # not once per sample
    assert "Not computed" in report.html and "--score-model" in report.html


def test_the_report_scores_in_the_students_format_with_its_options(runs: dict[str, Path], tmp_path: Path) -> None:
    """The student's format is built as synthesis builds it: with its format options (here
    gpt-oss at low reasoning effort), not a default rendering of the format's name."""
    from fault_server import FaultServer

    server = FaultServer()
    try:
        fmt = "format: gpt-oss\n  format_options: {reasoning_effort: low, current_date: ''}"
        config = served_student_config(tmp_path, server.url, fmt)
        _, report = write_report(runs["tessy"], html=tmp_path / "r.html", student_config=config)
    finally:
        server.close()
    prompts = [r["body"]["prompt"] for r in server.requests]
    assert report.nll is not None and prompts
    assert all("Reasoning: low" in p and "Current date" not in p for p in prompts)
