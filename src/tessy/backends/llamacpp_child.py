"""The child process that runs one llama.cpp server (through the ``xllamacpp`` wheel).

Started by :class:`tessy.backends.llamacpp.LlamaServer`; not meant to be run by hand. It prints
one JSON line with the server's address once the model is loaded, then serves until its stdin
closes (the parent asks it to stop, or the parent died). On Linux it also asks the kernel to
end it when the parent dies, so a killed parent never leaves a server behind.
"""

from __future__ import annotations

import json
import signal
import sys


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def main() -> int:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    args = json.loads(sys.argv[1])
    try:
        import xllamacpp
    except ImportError:
        print(
            json.dumps({"error": "the 'xllamacpp' package is not installed: pip install 'tessy[llamacpp]'"}), flush=True
        )
        return 2
    params = xllamacpp.CommonParams()
    params.model.path = args["model"]
    params.model_alias = {args["alias"]}
    params.n_ctx = args["n_ctx"]
    params.n_parallel = args["n_parallel"]
    params.cpuparams.n_threads = args["n_threads"]
    params.cpuparams_batch.n_threads = args["n_threads"]
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port
    params.verbosity = args.get("verbosity", 1)
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as exc:
        print(json.dumps({"error": f"llama.cpp could not start: {exc} (its log says why)"}), flush=True)
        return 1
    print(json.dumps({"url": server.listening_address}), flush=True)
    try:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe or is gone
    finally:
        del server  # closes the port at once
    return 0


if __name__ == "__main__":
    sys.exit(main())
