"""A run split over client processes (``tessy synth --workers N``, ``tessy.synthesize_sharded``):
one output, one summary, resume, and a killed worker that costs nothing but its samples in flight."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import tessy
from tessy import ConfigError, DataError, ShardError, load_config, synthesize_sharded
from tessy.cli import main, parser
from tessy.data import OutputStore
from tessy.jsonl import tail_jsonl
from tessy.prompts import BadLine
from tessy.records import RunStats, Sample
from tessy.report.runs import load_run, run_stats
from tessy.shard import Shard, shard_of, shard_output, shard_outputs
from tessy.sharded import split_config

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "examples" / "offline.yaml"
FAST = ["student.latency_s=0.002", "teacher.latency_s=0.002"]


def write_prompts(path: Path, n: int) -> list[str]:
    ids = [f"p{i}" for i in range(n)]
    path.write_text("".join(json.dumps({"id": i, "prompt": f"Question {i}?"}) + "\n" for i in ids), encoding="utf-8")
    return ids


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def without_wall(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "stats": {k: v for k, v in record["stats"].items() if k != "wall_s"}}


def files_beside(output: Path) -> set[str]:
    return {p.name for p in output.parent.iterdir() if p.name.startswith(output.stem)}


# -- which shard owns what ----------------------------------------------------------------------


def test_a_sample_belongs_to_the_same_shard_in_every_process_whatever_the_hash_seed() -> None:
    ids = [f"p{i}" for i in range(200)]
    here = [shard_of(i, 4) for i in ids]
    code = "import json,sys; from tessy.shard import shard_of; print(json.dumps([shard_of(f'p{i}', 4) for i in range(200)]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONHASHSEED": "12345"}
    there = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout)
    assert here == there
    assert set(Counter(here)) == {0, 1, 2, 3}  # every shard gets some
    assert max(Counter(here).values()) < 80  # and none most


def test_every_input_is_owned_by_exactly_one_shard_malformed_lines_included() -> None:
    items: list[Sample | BadLine] = [Sample.from_prompt(f"s{i}", "q") for i in range(50)]
    items += [BadLine("in.jsonl", n, "not JSON", "{") for n in range(1, 20)]
    shards = [Shard(k, 3) for k in range(3)]
    assert all(sum(s.owns(item) for s in shards) == 1 for item in items)


def test_each_shard_gets_its_share_of_the_servers_limits_and_the_config_hash_stays() -> None:
    config = load_config(OFFLINE, ["max_in_flight=10", "teacher.max_concurrency=7", "student.max_concurrency=1"])
    shard = split_config(config, 4)
    assert (shard.max_in_flight, shard.teacher.max_concurrency, shard.student.max_concurrency) == (3, 2, 1)
    assert shard.config_hash() == config.config_hash()


def test_tail_reads_only_the_whole_lines_a_file_gained(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    assert tail_jsonl(path, 0) == ([], 0)
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c"')
    objs, offset = tail_jsonl(path, 0)
    assert [o["id"] for o in objs] == ["a", "b"] and offset == 24
    with path.open("ab") as f:
        f.write(b'}\n{"id": "d"}\n')
    objs, offset = tail_jsonl(path, offset)
    assert [o["id"] for o in objs] == ["c", "d"] and offset == path.stat().st_size


# -- whole runs ----------------------------------------------------------------------------------


def test_two_workers_write_the_records_one_process_writes_each_id_once_into_one_output(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    ids = write_prompts(source, 40)
    config = load_config(OFFLINE, FAST)
    one = tmp_path / "one.jsonl"
    tessy.synthesize(config, prompts=source, output=one)
    out = tmp_path / "out.jsonl"
    summary = synthesize_sharded(config, workers=2, prompts=source, output=out)

    sharded, single = lines(out), lines(one)
    assert Counter(r["id"] for r in sharded) == Counter(ids)
    assert sorted(map(without_wall, sharded), key=lambda r: r["id"]) == sorted(
        map(without_wall, single), key=lambda r: r["id"]
    )
    assert {r["config_hash"] for r in sharded} == {config.config_hash()}
    # The user sees one run: its output, failures (none), config, summary and lock; no shard files.
    assert files_beside(out) == {"out.jsonl", "out.config.json", "out.summary.json", "out.lock"}
    saved = json.loads((tmp_path / "out.summary.json").read_text())
    assert saved["written"] == summary.written == 40 and saved["error"] is None
    assert saved["requests"] == sum(r["stats"]["requests"] for r in single)
    assert summary.total_tokens == sum(r["stats"]["teacher_tokens"] + r["stats"]["student_tokens"] for r in single)
    # check, report and export read it as any run's output: the report's counters are the live ones.
    assert main(["check", str(out)]) == 0
    read = run_stats(load_run(out))
    names = [f.name for f in dataclasses.fields(RunStats)]
    assert {n: getattr(summary, n) for n in names} == {n: getattr(read, n) for n in names}
    assert main(["export", str(out), "--format", "sharegpt", "--out", str(tmp_path / "sharegpt.jsonl")]) == 0
    assert len(lines(tmp_path / "sharegpt.jsonl")) == 40


@pytest.mark.slow
def test_a_rerun_skips_the_finished_ids_whatever_the_number_of_workers(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    ids = write_prompts(source, 30)
    out = tmp_path / "out.jsonl"
    config = load_config(OFFLINE, FAST)
    first = synthesize_sharded(config.model_copy(update={"limit": 12}), workers=2, prompts=source, output=out)
    assert first.written == 12
    second = synthesize_sharded(config, workers=3, prompts=source, output=out)
    assert (second.written, second.skipped_done) == (18, 12)
    assert Counter(r["id"] for r in lines(out)) == Counter(ids)
    third = tessy.synthesize(config, prompts=source, output=out)  # one process resumes it too
    assert (third.written, third.skipped_done) == (0, 30)


@pytest.mark.slow
def test_malformed_lines_go_once_to_the_one_failure_file_and_count_as_one_process_counts_them(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.jsonl"
    write_prompts(source, 10)
    with source.open("a") as f:
        f.write("not json\n{also not\n" + json.dumps({"id": "p3", "prompt": "again"}) + "\n")
    config = load_config(OFFLINE, FAST)
    out = tmp_path / "out.jsonl"
    summary = synthesize_sharded(config, workers=3, prompts=source, output=out)
    failures = lines(tmp_path / "out.failed.jsonl")
    assert sorted(f["id"] for f in failures) == ["in.jsonl:11", "in.jsonl:12", "in.jsonl:13"]
    assert (summary.written, summary.bad_lines, summary.n_failed) == (10, 3, 0)
    again = synthesize_sharded(config, workers=2, prompts=source, output=out)
    assert len(lines(tmp_path / "out.failed.jsonl")) == 3
    assert (again.written, again.skipped_done, again.bad_lines) == (0, 10, 3)


def test_a_second_run_on_an_output_a_sharded_run_holds_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_prompts(source, 4)
    out = tmp_path / "out.jsonl"
    config = load_config(OFFLINE, FAST)
    with (
        OutputStore.open(out, config=config.dump(), config_hash=config.config_hash()),
        pytest.raises(DataError, match="another tessy run"),
    ):
        synthesize_sharded(config, workers=2, prompts=source, output=out)
    assert not shard_outputs(out)


def test_a_sharded_run_with_another_config_refuses_to_append_as_one_process_does(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_prompts(source, 6)
    out = tmp_path / "out.jsonl"
    config = load_config(OFFLINE, FAST)
    tessy.synthesize(config.model_copy(update={"limit": 2}), prompts=source, output=out)
    other = load_config(OFFLINE, [*FAST, "teacher.chunk_tokens=7"])
    with pytest.raises(DataError, match="another config"):
        synthesize_sharded(other, workers=2, prompts=source, output=out)
    assert len(lines(out)) == 2 and not shard_outputs(out)


def test_shard_files_a_dead_coordinator_left_are_merged_once_on_the_next_run(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    ids = write_prompts(source, 20)
    config = load_config(OFFLINE, FAST)
    out = tmp_path / "out.jsonl"
    # A coordinator that died after merging some of its shard's records: they are in both files.
    earlier = tmp_path / "earlier.jsonl"
    tessy.synthesize(config.model_copy(update={"limit": 8}), prompts=source, output=earlier)
    made = earlier.read_text().splitlines(keepends=True)
    out.write_text("".join(made[:3]))
    shard_output(out, 5).write_text("".join(made) + '{"id": "p9", "torn')
    summary = synthesize_sharded(config, workers=2, prompts=source, output=out)
    assert Counter(r["id"] for r in lines(out)) == Counter(ids)
    assert (summary.skipped_done, summary.written) == (8, 12)
    assert not shard_outputs(out)


def test_a_backend_that_loads_a_model_in_each_process_is_refused(tmp_path: Path) -> None:
    config = load_config(OFFLINE, ['teacher={"backend": "llamacpp", "model": "smollm2-135m"}'])
    with pytest.raises(ConfigError, match="servers the shards share"):
        synthesize_sharded(config, workers=2, prompts=["q"], output=tmp_path / "out.jsonl")


def test_rejection_sampling_is_refused_in_shards_and_nothing_is_written(tmp_path: Path) -> None:
    config = load_config(OFFLINE, ["samples_per_prompt=2", "keep=best", "verify.kind=math"])
    with pytest.raises(ConfigError, match="keep: best decides among a prompt's samples"):
        synthesize_sharded(config, workers=2, prompts=["q"], output=tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_a_worker_that_fails_ends_the_run_with_a_shard_error_and_keeps_what_the_others_wrote(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.jsonl"
    write_prompts(source, 10)
    out = tmp_path / "out.jsonl"
    # Each worker checks its servers first; an unreachable one fails every shard the same way.
    config = load_config(
        OFFLINE,
        [
            'student={"backend": "openai", "model": "m", "endpoints": ["http://127.0.0.1:9/v1"], "max_retries": 0, '
            '"connect_timeout_s": 1}',
        ],
    )
    with pytest.raises(ShardError, match="2 of 2 shards ended") as caught:
        synthesize_sharded(config, workers=2, prompts=source, output=out)
    assert "run the same command again" in str(caught.value)
    saved = json.loads((tmp_path / "out.summary.json").read_text())
    assert saved["written"] == 0 and "shard 0" in saved["error"] and "shard 1" in saved["error"]
    assert not shard_outputs(out)


# -- a killed worker ------------------------------------------------------------------------------


@pytest.mark.slow
def test_killing_one_worker_mid_run_loses_and_doubles_nothing_and_a_rerun_finishes_its_samples(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.jsonl"
    ids = write_prompts(source, 120)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "tessy.cli", "synth", "--config", str(OFFLINE), "--input", str(source)]
    cmd += ["--output", str(out), "--workers", "2", "student.latency_s=0.01", "teacher.latency_s=0.01"]
    cmd += ["max_in_flight=8"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "300"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        # Worker 1 writes its own file under its own lock, which names its process.
        lock = out.with_name("out.shard-1.lock")
        deadline = time.monotonic() + 60
        while len(lines(out)) < 10:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.01)
        os.kill(int(lock.read_text()), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    assert "shard 1" in stderr and "SIGKILL" in " ".join(stderr.split())
    kept = Counter(r["id"] for r in lines(out))
    assert max(kept.values()) == 1
    lost = set(ids) - set(kept)
    assert lost and all(shard_of(i, 2) == 1 for i in lost), "only the killed shard's samples are missing"
    assert not shard_outputs(out)

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert Counter(r["id"] for r in lines(out)) == Counter(ids)
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert (summary["written"], summary["skipped_done"], summary["error"]) == (len(lost), len(kept), None)


def test_the_slurm_example_is_valid_bash_and_its_tessy_command_parses() -> None:
    script = ROOT / "examples" / "slurm" / "tessy-ray.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    args = parser().parse_args(
        ["synth", "--config", "c.yaml", "--input", "i", "--output", "o", "k=v", "--workers", "8", "--ray", "h:6379"]
    )
    assert (args.workers, args.ray, args.overrides) == (8, "h:6379", ["k=v"])
    assert "--ray" in script.read_text() and "--workers" in script.read_text()
