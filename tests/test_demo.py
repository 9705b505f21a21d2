"""`tessy demo` end to end on real models (SmolLM2 in both roles, to stay quick), and its HTML view."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tessy.check import check_run
from tessy.models import MissingModelError, resolve
from tessy.records import Record
from tessy.view import render_view


def test_view_escapes_model_text():
    record = {
        "id": "x<y",
        "messages": [{"role": "user", "content": "<b>hi</b>"}, {"role": "assistant", "content": "..."}],
        "spans": [
            {"source": "student", "phase": "think", "text": "Okay, <script>alert(1)</script>", "tokens": 5},
            {"source": "teacher", "phase": "think", "text": " a < b && c > d", "tokens": 7},
            {"source": "student", "phase": "answer", "text": "Done.", "tokens": 2},
        ],
        "stats": {"teacher_tokens": 7},
    }
    page = render_view([Record.from_json(record)], title="t")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &lt; b &amp;&amp; c &gt; d" in page and "&lt;b&gt;hi&lt;/b&gt;" in page
    assert 'class="span teacher"' in page and 'class="span student answer"' in page


def _processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.real
@pytest.mark.slow
def test_demo_writes_data_view_and_summary_and_leaves_no_server(tmp_path):
    try:
        resolve("smollm2-135m")
    except MissingModelError as exc:
        pytest.skip(str(exc))
    marker = f"TESSY_DEMO_TEST={uuid.uuid4().hex}"
    env = dict(os.environ, TESSY_DEMO_TEST=marker.split("=")[1], COLUMNS="200")
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "tessy.cli", "demo", "--output", str(out), "--teacher", "smollm2-135m", "--limit", "3"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "teacher token share" in done.stdout
    records = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    failed = (out / "data.failed.jsonl").read_text().splitlines() if (out / "data.failed.jsonl").exists() else []
    assert len(records) + len(failed) == 3 and records
    for r in records:
        assert {s["source"] for s in r["spans"]} == {"teacher", "student"}
        assert r["spans"][0]["source"] == "student"
        assert r["messages"][-1]["content"].startswith("<think>\n")
    checked = check_run(out / "data.jsonl")
    # Every invariant of design.md on every record, a word glued across a hand-over included.
    assert checked.ok, (checked.by_rule, checked.examples)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == len(records) and 0 < summary["teacher token share"] < 1
    assert "tessy demo" in (out / "view.html").read_text()
    assert _processes_with(marker) == []  # the servers stopped with the demo
    # A second run resumes: nothing is added.
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and len((out / "data.jsonl").read_text().splitlines()) == len(records)
