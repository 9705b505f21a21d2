"""The library face as a notebook uses it: configs from text paths and dicts, prompts from lists
and datasets, records back as an async iterator or a datasets.Dataset, inside a running loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import tessy
from tessy.fakes import ScriptedBackend

OFFLINE = Path(__file__).resolve().parents[1] / "examples" / "offline.yaml"
PROMPTS = ["What is 17 + 25?", "Sum the list [1, 2, 3].", "Is 91 prime?"]


def in_memory() -> tessy.SynthConfig:
    """The offline example's config without its output file (it names one beside the example)."""
    return tessy.load_config(OFFLINE, {"data.output": None})


async def test_a_synthesis_yields_typed_records_and_writes_nothing_without_an_output():
    async with tessy.Synthesis(in_memory(), prompts=PROMPTS) as run:
        records = [record async for record in run]
    assert len(records) == 3 and all(isinstance(r, tessy.Record) for r in records)
    assert {r.prompt[-1]["content"] for r in records} == set(PROMPTS)
    for record in records:
        assert record.answer and record.thinking
        assert {s.source for s in record.spans if s.phase == "think"} == {"teacher", "student"}
    assert run.summary.written == 3 and run.summary.teacher_share > 0
    assert run.output is None and not run.failures


async def test_inputs_that_are_no_prompts_are_kept_as_failures_with_their_reason():
    prompts = [{"id": "a", "prompt": "What is 2 + 2?", "answer": "4"}, {"id": "b", "text": "no prompt here"}, 7]
    async with tessy.Synthesis(in_memory(), prompts=prompts) as run:
        records = [record async for record in run]
    assert [r.id for r in records] == ["a"] and records[0].fields == {"answer": "4"}
    assert [f.failure.kind for f in run.failures] == ["bad_input", "bad_input"]
    assert "no 'prompt' or 'messages'" in run.failures[0].failure.detail
    assert run.summary.bad_lines == 2


async def test_asynthesize_writes_and_resumes_an_output_given_in_the_call(tmp_path: Path):
    out = tmp_path / "run.jsonl"
    config = tessy.load_config(OFFLINE)
    first = await tessy.asynthesize(config, prompts=PROMPTS, output=out)
    again = await tessy.asynthesize(config, prompts=PROMPTS, output=out)
    assert first.written == 3 and again.written == 0 and again.skipped_done == 3
    assert sorted(r.prompt[-1]["content"] for r in tessy.read_records(out)) == sorted(PROMPTS)
    assert len(out.read_text().splitlines()) == 3


async def test_synthesize_works_inside_a_running_event_loop_as_in_a_notebook(tmp_path: Path):
    asyncio.get_running_loop()  # the situation of a Jupyter cell
    summary = tessy.synthesize(str(OFFLINE), prompts=PROMPTS, output=tmp_path / "nb.jsonl")
    assert summary.written == 3
    data = tessy.synthesize(in_memory(), prompts=PROMPTS[:2], dataset=True)
    assert data.num_rows == 2 and set(data.column_names) >= {"id", "messages", "spans", "stats"}


def test_synthesize_returns_a_dataset_of_the_whole_output_with_the_export_schema(tmp_path: Path):
    out = tmp_path / "ds.jsonl"
    tessy.synthesize(OFFLINE, prompts=PROMPTS[:1], output=out)
    data = tessy.synthesize(OFFLINE, prompts=PROMPTS, output=out, dataset=True)
    assert data.num_rows == 3  # the resumed record and the two new ones
    row = data[0]
    assert row["messages"][-1]["role"] == "assistant" and json.loads(row["fields"]) == {}


def test_prompts_may_come_from_a_datasets_dataset_with_its_fields_kept():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"question": q, "level": i} for i, q in enumerate(PROMPTS)])

    async def run() -> list[tessy.Record]:
        config = tessy.load_config(in_memory(), {"data.prompt_field": "question"})
        async with tessy.Synthesis(config, prompts=ds) as synthesis:
            return [r async for r in synthesis]

    records = asyncio.run(run())
    assert sorted(r.fields["level"] for r in records) == [0, 1, 2]


def test_a_run_without_an_output_is_refused_where_its_records_would_be_lost():
    with pytest.raises(tessy.ConfigError, match="say where records go"):
        tessy.synthesize(in_memory(), prompts=PROMPTS)


async def test_leaving_the_iteration_early_stops_the_samples_in_flight_and_closes_the_engine():
    teacher = ScriptedBackend.cycling([" 17 + 25 = 42. Now", " checked.\n</think>"], latency_s=0.01)
    student = ScriptedBackend.cycling([" Okay, so"], [" done."], latency_s=0.01)
    config = in_memory()
    engine = tessy.build_engine(config, backends={"teacher": teacher, "student": student})
    async with engine, tessy.Synthesis(config, prompts=[f"q{i}" for i in range(40)], engine=engine) as run:
        async for _ in run:
            break
    assert run.summary.written <= 1
    assert all(task.done() for task in asyncio.all_tasks() if task.get_name().startswith("tessy-sample"))


async def test_an_engine_is_an_async_context_manager_that_closes_its_backends():
    closed: list[str] = []

    class Closing(ScriptedBackend):
        async def aclose(self) -> None:
            closed.append("closed")

    config = tessy.load_config(OFFLINE)
    backends = {name: Closing.cycling([" text. Now"], [" done."]) for name in ("teacher", "student")}
    async with tessy.build_engine(config, backends=backends) as engine:  # type: ignore[arg-type]
        assert isinstance(engine, tessy.Engine)
    assert closed == ["closed", "closed"]
