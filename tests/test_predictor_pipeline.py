"""Sampling traces, and the whole predictor pipeline at tiny scale: sample, annotate, train, eval, synth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tessy import BackendError, Role, get_format
from tessy.backends import GenerateRequest
from tessy.boundary import LexiconPredictor
from tessy.cli import main
from tessy.fakes import ScriptedBackend
from tessy.jsonl import read_jsonl
from tessy.predictor.sample import asample_traces

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"What is {i} + {2 * i}?"}) + "\n" for i in range(n)))
    return path


# -- sample ------------------------------------------------------------------------------


async def test_sampling_writes_one_trace_per_prompt_in_the_roles_format(tmp_path: Path):
    def respond(request: GenerateRequest) -> Any:
        if request.sample_id == "p3":
            raise BackendError("bad prompt", retryable=False)
        if request.sample_id == "p4":
            return " Okay, so.</think>\n\nanswer text"
        return " Okay, so the sum is 12 and nothing ends this thinking at all"

    backend = ScriptedBackend(responder=respond, latency_s=0.01)
    role = Role("student", backend, get_format("qwen3"), LexiconPredictor())
    prompts = write_prompts(tmp_path / "prompts.jsonl", 8)
    out = tmp_path / "traces.jsonl"
    summary = await asample_traces(role, prompts, out, max_tokens=6, concurrency=3)
    records = {r["id"]: r for r in read_jsonl(out)}
    assert summary.written == 7 and summary.failed == 1 and set(records) == {f"p{i}" for i in range(8)} - {"p3"}
    assert backend.max_in_flight <= 3  # concurrency is bounded
    assert sorted(backend.released) == sorted(f"p{i}" for i in range(8))  # failed or not, each prompt let go
    # The prompt is the role's thinking prompt; traces stop at max_tokens or the end of thinking.
    first = backend.requests[0]
    assert first.prompt.text.endswith("<|im_start|>assistant\n<think>\n") and first.stop == ("</think>",)
    assert records["p0"] == {
        "id": "p0",
        "role": "student",
        "prompt": "What is 0 + 0?",
        "text": " Okay, so the sum is",
        "tokens": 6,
        "ended": False,
    }
    assert records["p4"]["text"] == " Okay, so." and records["p4"]["ended"] is True
    # A rerun samples only what is missing (here: the prompt that failed).
    again = await asample_traces(role, prompts, out, max_tokens=6, limit=5)
    assert again.skipped == 4 and again.failed == 1 and again.written == 0


# -- the whole pipeline ------------------------------------------------------------------

SCRIPTED = {
    "student": {
        "backend": "scripted",
        "format": "qwen3",
        "responses": [
            " Okay, so let me look at what is asked. Hmm, the list could be empty here",
            " Wait, let me double-check that step. So the sum holds and then we go on",
        ],
        "answers": ["42."],
    },
    "teacher": {
        "backend": "scripted",
        "format": "qwen3",
        "responses": [
            " 17 + 25 = 42, since 7 + 5 = 12 carries one into the tens. Now the check: 42 - 25 = 17.",
            " a single pass keeps a running total in O(n) time. But if the list is empty the total is 0.",
        ],
    },
}


def run_cli(*args: str) -> None:
    assert main(list(args)) == 0, args


def test_sample_takes_its_prompts_from_the_configs_data_section_or_a_parquet_file(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"id": f"q{i}", "problem": f"What is {i} + 1?"} for i in range(3)]
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {**SCRIPTED, "data": {"input": "problems.jsonl", "prompt_field": "problem"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "traces.jsonl"
    common = ["predictor", "sample", "--config", str(tmp_path / "run.yaml"), "--role", "student"]
    run_cli(*common, "--output", str(out), "--max-tokens", "5")
    assert [(r["id"], r["prompt"]) for r in read_jsonl(out)] == [(r["id"], r["problem"]) for r in rows]

    datasets.Dataset.from_list([{"id": "z", "problem": "Is 91 prime?"}]).to_parquet(str(tmp_path / "more.parquet"))
    run_cli(*common, "--input", str(tmp_path / "more.parquet"), "--output", str(out), "--max-tokens", "5")
    assert [r["id"] for r in read_jsonl(out)] == ["q0", "q1", "q2", "z"]


transformers = pytest.importorskip("transformers")


@pytest.mark.slow
def test_the_tiny_pipeline_from_sampling_to_synthesis(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from tiny_models import save_tiny_backbone

    (tmp_path / "run.yaml").write_text(yaml.safe_dump(SCRIPTED))
    prompts = write_prompts(tmp_path / "prompts.jsonl", 30)
    backbone = save_tiny_backbone(tmp_path / "backbone", decisive=False)
    d = str(tmp_path)
    metrics: dict[str, dict[str, Any]] = {}
    for role in ("teacher", "student"):
        traces = f"{d}/traces/{role}.jsonl"
        ann = f"{d}/ann/{role}.jsonl"
        pred = f"{d}/predictors/{role}"
        run_cli(
            "predictor",
            "sample",
            "--config",
            f"{d}/run.yaml",
            "--role",
            role,
            "--input",
            str(prompts),
            "--output",
            traces,
            "--max-tokens",
            "60",
        )
        run_cli(
            "predictor", "annotate", "--input", traces, "--output", ann, "--judge", "lexicon", "--window-words", "15"
        )
        run_cli(
            "predictor", "train", "--data", ann, "--backbone", str(backbone), "--output", pred,
            "--epochs", "3", "--lr", "3e-3", "--batch-size", "8", "--device", "cpu",
        )  # fmt: skip
        for name in (pred, "lexicon"):
            out = f"{d}/eval-{role}-{Path(name).name}.json"
            run_cli(
                "predictor",
                "eval",
                "--data",
                f"{pred}/heldout.jsonl",
                "--predictor",
                name,
                "--tokenizer",
                pred,
                "--json",
                out,
                "--device",
                "cpu",
            )
            metrics[f"{role}/{Path(name).name}"] = json.loads(Path(out).read_text())

        card = json.loads(Path(pred, "tessy_predictor.json").read_text())
        assert card["roles"] == [role] and card["backbone"] == str(backbone)
        assert card["windows"]["train"] > card["windows"]["test"] > 0
        assert card["history"][-1]["train_loss"] < card["history"][0]["train_loss"]  # it learns something
        assert set(card["test"]) >= {"precision", "recall", "f1", "first_cut_accuracy"}
        assert card["test"] == {k: v for k, v in metrics[f"{role}/{role}"].items() if k != "predictor"}
        assert Path(pred, "config.json").exists() and Path(pred, "tokenizer.json").exists()
    # The lexicon scores itself almost perfectly on windows it annotated.
    assert metrics["teacher/lexicon"]["f1"] > 0.8

    output = tmp_path / "synth.jsonl"
    run_cli(
        "synth", "--config", str(ROOT / "examples" / "offline.yaml"), "--output", str(output),
        f"teacher.predictor={{type: classifier, path: {d}/predictors/teacher, device: cpu}}",
        f"student.predictor={{type: classifier, path: {d}/predictors/student, device: cpu}}",
    )  # fmt: skip
    records = list(read_jsonl(output))
    assert len(records) == 5 and all(r["spans"] for r in records)
    assert "teacher token share" in capsys.readouterr().out


@pytest.mark.real
@pytest.mark.slow
def test_training_on_the_real_smollm2_backbone(tmp_path: Path):
    """Two steps on SmolLM2-135M (from its GGUF), top layer only; the checkpoint loads and predicts."""
    from tessy import models
    from tessy.boundary.classifier import ClassifierPredictor
    from tessy.predictor.train import TrainSettings, train_predictor
    from tessy.text import TextView

    try:
        models.resolve("smollm2-135m")
    except models.MissingModelError as exc:
        pytest.skip(f"SmolLM2 is not installed here: {exc}")
    traces = [" ".join(["Okay, so we add 17 and 25 to get 42. Hmm, then we check: 42 - 25 = 17."] * 4)] * 6
    ann = tmp_path / "ann.jsonl"
    with ann.open("w") as f:
        for i, text in enumerate(traces):
            spans = LexiconPredictor().phrase_spans(text)
            f.write(
                json.dumps({"trace_id": f"t{i}", "role": "teacher", "context": "", "window_text": text, "spans": spans})
                + "\n"
            )
    out = tmp_path / "smol"
    settings = TrainSettings(epochs=1, max_steps=2, batch_size=2, max_length=48, train_layers=1, device="cpu")
    result = train_predictor([ann], "smollm2-135m", out, settings)
    assert result.card["model_type"] == "llama" and result.card["steps"] == 2
    assert result.card["trainable_parameters"] < result.card["parameters"] / 10
    assert result.card["cached_frozen_layers"] is True  # the Llama view over cached features is exact
    pred = ClassifierPredictor.load(out, device="cpu")
    assert pred.model.causal
    types = pred.next_token_types(TextView.of("Okay, so we add"), [" 17", " and", " 25", "."])
    assert len(types) == 4


def test_training_the_top_layers_from_cached_features_matches_full_forwards(tmp_path: Path):
    from tessy.predictor.train import TrainSettings, train_predictor
    from tiny_models import save_tiny_backbone

    backbone = save_tiny_backbone(tmp_path / "backbone", decisive=False)
    text = " ".join(["Okay, so we add 17 and 25 to get 42. Hmm, then we check: 42 - 25 = 17."] * 3)
    ann = tmp_path / "ann.jsonl"
    with ann.open("w") as f:
        for i in range(12):
            spans = LexiconPredictor().phrase_spans(text)
            f.write(
                json.dumps({"trace_id": f"t{i}", "role": "teacher", "context": "", "window_text": text, "spans": spans})
                + "\n"
            )
    cards = {}
    for cached in (True, False):
        settings = TrainSettings(
            epochs=2,
            lr=3e-3,
            batch_size=4,
            train_layers=1,
            cache_frozen=cached,
            device="cpu",
            test_fraction=0.0,
            val_fraction=0.4,
        )
        cards[cached] = train_predictor([ann], backbone, tmp_path / f"out-{cached}", settings).card
    assert cards[True]["cached_frozen_layers"] is True and cards[False]["cached_frozen_layers"] is False
    for a, b in zip(cards[True]["history"], cards[False]["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val"] == b["val"]


@pytest.mark.slow
def test_the_example_script_runs_end_to_end_with_scripted_models(tmp_path: Path):
    """examples/train_predictors.sh with the same steps, on scripted models and a tiny backbone."""
    import os
    import shutil
    import subprocess
    import sys

    from tiny_models import save_tiny_backbone

    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "models.yaml").write_text(yaml.safe_dump(SCRIPTED))
    synth = {
        **SCRIPTED,
        "teacher": {**SCRIPTED["teacher"], "predictor": {"type": "classifier", "path": "unset"}},
        "student": {**SCRIPTED["student"], "predictor": {"type": "classifier", "path": "unset"}},
        "guards": {"max_total_tokens": 400, "max_thinking_tokens": 300, "repetition": False},
    }
    (cfg / "synth.yaml").write_text(yaml.safe_dump(synth))
    for name in ("train_prompts.jsonl", "synth_prompts.jsonl"):
        shutil.copy(ROOT / "examples" / "predictors" / name, cfg / name)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "TESSY": f"{sys.executable} -m tessy.cli",
        "PYTHON": sys.executable,
        "CFG": str(cfg),
        "OUT": str(tmp_path / "out"),
        "JUDGE": "lexicon",
        "BACKBONE": str(save_tiny_backbone(tmp_path / "backbone", decisive=False)),
        "INSTALL_MODELS": "0",
        "N_TRACES": "24",
        "MAX_TOKENS": "60",
        "TRAIN_LAYERS": "1",
        "SYNTH_PROMPTS": "4",
        "DEVICE": "cpu",
        "COLUMNS": "200",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "examples" / "train_predictors.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tail = done.stdout[done.stdout.index("held-out F1") :]
    for line in ("teacher trained", "teacher lexicon", "student trained", "student lexicon"):
        assert " ".join(line.split()) in " ".join(tail.split())
    assert "teacher share" in tail and "switches/sample" in tail
    for role in ("teacher", "student"):
        assert (tmp_path / "out" / "predictors" / role / "tessy_predictor.json").exists()
