"""The one JSONL stack: whole-line appends, torn-tail repair, damaged lines skipped and counted,
the resume scan, and whole-file atomic writes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from tessy import DataError, jsonl
from tessy.jsonl import JsonlWriter, read_jsonl, repair_tail, scan_ids, write_atomic

GOOD = b'{"id": "a", "config_hash": "h1"}\n{"id": "b", "config_hash": "h1"}\n'

TORN_TAILS = [
    b'{"id": "c", "messages": [{"role": "us',  # a partial line, no newline
    b'{"id": "c", "config_hash": "h1"}',  # a whole object but no newline: not known complete
    b"\x00\x00\x00\x00",  # zeros left by a crash, no newline
    b"garbage\n",  # a complete line that is not JSON
    b'{"id": "c", "config_hash": "h1"\n',  # truncated JSON with a newline
    b"\xff\xfe{\n",  # not even UTF-8
    b"[1, 2]\n",  # JSON, but not an object
]


@pytest.mark.parametrize("tail", TORN_TAILS)
def test_a_writer_cuts_off_a_torn_last_line_and_appends_after_the_good_ones(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(GOOD + tail)
    with JsonlWriter(path) as w:
        assert path.read_bytes() == GOOD
        w.write({"id": "c"})
    assert [o["id"] for o in read_jsonl(path)] == ["a", "b", "c"]


def test_repair_finds_the_last_line_across_read_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl, "_BLOCK", 4)
    path = tmp_path / "f.jsonl"
    path.write_bytes(GOOD + b'{"id": "c", "text": "a long torn line')
    assert repair_tail(path) == len(b'{"id": "c", "text": "a long torn line')
    assert path.read_bytes() == GOOD
    path.write_bytes(b'{"only": "a torn first line')
    repair_tail(path)
    assert path.read_bytes() == b""


@pytest.mark.parametrize("content", [b"", GOOD, GOOD + b"\n", GOOD + b"   "])
def test_whole_files_are_left_as_they_are(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    assert repair_tail(path) == 0
    assert path.read_bytes() == content
    assert repair_tail(tmp_path / "missing.jsonl") == 0


def test_a_damaged_line_before_good_ones_is_never_cut(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"id": "a"}\n\x00\x00garbage\n{"id": "b"}\n')
    before = path.read_bytes()
    JsonlWriter(path).close()
    assert path.read_bytes() == before


def test_each_object_is_one_whole_line_even_after_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    calls: list[int] = []

    def short_write(fd: int, data: bytes) -> int:  # the kernel may take fewer bytes than given
        calls.append(len(data))
        return real_write(fd, data[:3])

    path = tmp_path / "f.jsonl"
    with JsonlWriter(path) as w:
        monkeypatch.setattr(os, "write", short_write)
        w.write({"id": "a", "text": "ü\n"})
        monkeypatch.undo()
        w.write({"id": "b"})
    assert len(calls) > 1
    assert [o["id"] for o in read_jsonl(path)] == ["a", "b"]


def test_fsync_makes_each_line_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    with JsonlWriter(tmp_path / "f.jsonl", fsync=True) as w:
        w.write({"id": "a"})
        w.write({"id": "b"})
    assert len(synced) == 2


def test_a_lone_surrogate_is_written_as_an_escape(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    with JsonlWriter(path) as w:
        w.write({"id": "a", "text": "\ud800 ü"})
    raw = path.read_bytes()
    raw.decode("utf-8")
    assert [o["text"] for o in read_jsonl(path)] == ["\ud800 ü"]


def test_a_writer_that_need_not_create_leaves_nothing_until_it_writes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.jsonl"
    with JsonlWriter(path, create=False) as w:
        assert not path.exists()
        w.write({"id": "a"})
    assert path.exists()
    with JsonlWriter(tmp_path / "made.jsonl"):
        pass
    assert (tmp_path / "made.jsonl").read_bytes() == b""


def test_a_folder_is_no_jsonl_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a folder"):
        JsonlWriter(tmp_path)
    with pytest.raises(DataError, match="is a folder"):
        list(read_jsonl(tmp_path))
    with pytest.raises(DataError, match="is a folder"):
        scan_ids(tmp_path)


def test_the_reader_skips_and_counts_damaged_lines_naming_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"id": "a"}\n\n{"id": "torn", "te\nnot json\n[1, 2]\n{"id": "\xff"}\n{"id": "b"}\n')
    damaged: list[int] = []
    with caplog.at_level(logging.WARNING, logger="tessy.jsonl"):
        objects = list(read_jsonl(path, damaged=damaged))
    # Bytes that are no UTF-8 damage a line (tessy writes none): skipped, as the resume scan does.
    assert [o["id"] for o in objects] == ["a", "b"]
    assert damaged == [3, 4, 5, 6]
    assert f"{path}:3" in caplog.text and f"{path}:6" in caplog.text


def test_the_reader_is_lazy(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(GOOD)
    reader = read_jsonl(path)
    path.write_bytes(GOOD + b'{"id": "c"}\n')  # read line by line, when asked
    assert [o["id"] for o in reader] == ["a", "b", "c"]


def test_a_missing_file_is_an_error_unless_missing_is_fine(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list(read_jsonl(tmp_path / "none.jsonl"))
    assert list(read_jsonl(tmp_path / "none.jsonl", missing_ok=True)) == []


def test_the_scan_reads_ids_and_hashes_of_any_key_order_and_repairs_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(
        '{"id": "we\\"ird\\\\id", "x": 1, "config_hash": "h1"}\n'
        '{"config_hash":"h2","id":"x"}\n{ "id" : 5 , "config_hash" : "h1" }\n\n'
        "garbage in the middle\n"
        '{"id": "y"}\n'
        '{"id": "torn", "config_hash": "h1"',
        encoding="utf-8",
    )
    ids, hashes = scan_ids(path)
    assert ids == {'we"ird\\id', "x", "5", "y"}
    assert hashes == {"h1", "h2", ""}
    assert path.read_bytes().endswith(b'{"id": "y"}\n')
    assert scan_ids(tmp_path / "none.jsonl") == (set(), set())


def test_an_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "train.jsonl"
    assert write_atomic(path, iter([{"a": 1}, {"b": "ü"}])) == 2
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [{"a": 1}, {"b": "ü"}]
    assert write_atomic(path, []) == 0
    assert path.read_bytes() == b""
    assert not (tmp_path / "sub" / "train.jsonl.tmp").exists()


def test_a_full_disk_takes_back_the_part_of_a_line_it_wrote_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    real_write = os.write
    calls = 0

    def disk_fills_mid_line(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, data[:5])  # some of the line fits
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "f.jsonl"
    with JsonlWriter(path) as w:
        w.write({"id": "a"})
        monkeypatch.setattr(os, "write", disk_fills_mid_line)
        with pytest.raises(DataError, match="No space left on device") as err:
            w.write({"id": "b", "text": "long enough to be torn"})
        monkeypatch.undo()
    assert "\n" not in str(err.value)
    assert path.read_bytes() == b'{"id": "a"}\n'  # no torn record


def test_a_line_nested_thousands_deep_is_damaged_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"id": "a"}\n' + b"[" * 5000 + b"]" * 5000 + b'\n{"id": "b"}\n')
    damaged: list[int] = []
    assert [o["id"] for o in read_jsonl(path, damaged=damaged)] == ["a", "b"]
    assert damaged == [2]
    assert scan_ids(path)[0] == {"a", "b"}


def test_the_resume_scan_never_takes_a_line_damaged_in_its_middle_as_done(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    good = b'{"id": "a", "messages": [], "spans": [{"text": "x"}], "config_hash": "h"}\n'
    damaged = b'{"id": "b", "messages": [], "sp\x00\x00\x00"}], "config_hash": "h"}\n'  # starts and ends well
    bad_bytes = b'{"id": "c", "text": "\xff\xfe", "config_hash": "h"}\n'
    path.write_bytes(good + damaged + bad_bytes + good.replace(b'"a"', b'"d"'))
    ids, hashes = scan_ids(path)
    assert ids == {"a", "d"} and hashes == {"h"}


def test_a_file_below_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("I am a file")
    with pytest.raises(DataError, match="is a file, not a folder"):
        JsonlWriter(tmp_path / "runs" / "out.jsonl")
