"""Shards as actors on a local Ray cluster (``tessy synth --ray``): every sample once, one
output, and a killed actor whose shard is restarted and resumes from its own file."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessy import RunSummary, load_config, synthesize_sharded
from tessy.cli import main
from tessy.shard import shard_of, shard_output, shard_outputs

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'tessy[ray]'")
from tessy.ray_runner import actor_name  # noqa: E402  (needs ray)

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "examples" / "offline.yaml"


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A Ray cluster of this machine alone, shared by the tests of this file (it takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def write_prompts(path: Path, n: int) -> list[str]:
    ids = [f"p{i}" for i in range(n)]
    path.write_text("".join(json.dumps({"id": i, "prompt": f"Question {i}?"}) + "\n" for i in ids), encoding="utf-8")
    return ids


def ids_in(path: Path) -> Counter[str]:
    return Counter(json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines())


def test_on_a_ray_cluster_every_sample_is_written_once_into_one_output(cluster: None, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    ids = write_prompts(source, 30)
    out = tmp_path / "out.jsonl"
    args = ["synth", "--config", str(OFFLINE), "--input", str(source), "--output", str(out)]
    assert main([*args, "student.latency_s=0.002", "teacher.latency_s=0.002", "--ray", "--workers", "2"]) == 0
    assert ids_in(out) == Counter(ids)
    summary = json.loads(out.with_name("out.summary.json").read_text())
    assert (summary["written"], summary["error"]) == (30, None)
    assert not shard_outputs(out)
    assert main(["check", str(out)]) == 0


@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_its_shard_resumes_from_its_own_file(
    cluster: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "in.jsonl"
    ids = write_prompts(source, 80)
    out = tmp_path / "out.jsonl"
    victim = shard_output(out, 1)
    config = load_config(OFFLINE, ["student.latency_s=0.01", "teacher.latency_s=0.01", "max_in_flight=8"])
    killed: dict[str, Any] = {}

    def kill_once(summary: RunSummary) -> None:
        # Once the shard has written some records (and has more to do), its actor's process dies.
        if not killed and victim.exists() and victim.read_bytes().count(b"\n") >= 5:
            killed["had"] = victim.read_bytes().count(b"\n")
            ray.kill(ray.get_actor(actor_name(victim)), no_restart=False)
        elif killed and victim.exists():
            killed["file"] = ids_in(victim)  # the shard's own file, as the run goes on

    with caplog.at_level(logging.WARNING, logger="tessy.ray_runner"):
        summary = synthesize_sharded(config, workers=2, ray=True, prompts=source, output=out, progress=kill_once)
    assert killed, "the shard finished before it could be killed"
    assert "runs again (restart 1 of 3)" in caplog.text
    assert ids_in(out) == Counter(ids)  # every sample once: none lost with the actor, none run twice
    mine = {i for i in ids if shard_of(i, 2) == 1}
    assert killed["had"] < len(mine)
    # The restarted shard resumed from its file: it finished its samples, none of them twice.
    assert killed["file"] == Counter(mine)
    # The restarted shard skipped what it had written before the kill; the run counts each sample once.
    assert (summary.written, summary.skipped_done, summary.error) == (80, 0, None)
