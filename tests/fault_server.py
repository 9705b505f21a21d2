"""A local OpenAI-compatible server that misbehaves on cue, for fault tests.

Each POST to ``/v1/completions`` takes the next behaviour from a queue (or the default):

``ok`` (a valid completion), ``500``, ``429``, ``400``, ``hang`` (never answers in time),
``reset`` (drops the connection without a response), ``empty`` (no text, finish ``stop`` and no token counted), ``malformed``
(not JSON), ``midstream`` (a stream that breaks after two tokens), ``noecho`` (ignores ``echo``,
as llama.cpp's server does), ``echo-key`` (a 401 whose message repeats the API key sent, as
some gateways do), ``odd-usage`` (a completion whose ``usage.prompt_tokens_details`` is ``7``).
With ``echo`` and ``logprobs``, an ``ok`` answer echoes the prompt split into words and newlines, each scored
``-len(word) / 10`` (the first ``null``), then one generated token, as vLLM answers.
``words`` (the tokens an ``ok`` answer writes) or ``responder`` (a function of the request body
giving them) say what a completion holds; ``stop`` strings are matched server-side (not while
streaming: tessy finds them itself), and a completion that ends before ``max_tokens`` ends with
an end-of-sequence token, counted in ``usage.completion_tokens`` as servers count it.
Every request body is recorded. ``GET /v1/models`` lists :attr:`FaultServer.models` (the
pre-flight check of a run), or answers :attr:`FaultServer.models_error` (a status and a message)
when set.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ["The", " answer", " is", " forty", "-two", " and", " that", " is", " all", "."]


class FaultServer:
    def __init__(self, default: str = "ok", hang_s: float = 5.0) -> None:
        self.behaviours: deque[str] = deque()
        self.default = default
        self.hang_s = hang_s
        self.requests: list[dict[str, Any]] = []
        self.words: list[str] = list(WORDS)
        self.responder: Callable[[dict[str, Any]], list[str]] | None = None
        self.lock = threading.Lock()
        self.models: tuple[str, ...] = ("m", "s")
        self.models_error: tuple[int, str] | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/v1/models":
                    owner._json(self, 404, {"error": {"message": f"no route {self.path}"}})
                elif owner.models_error is not None:
                    status, message = owner.models_error
                    owner._json(self, status, {"error": {"message": message, "type": "x"}})
                else:
                    owner._json(
                        self, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in owner.models]}
                    )

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with owner.lock:
                    owner.requests.append({"body": body, "headers": dict(self.headers)})
                    behaviour = owner.behaviours.popleft() if owner.behaviours else owner.default
                owner.respond(self, behaviour, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def queue(self, *behaviours: str) -> None:
        with self.lock:
            self.behaviours.extend(behaviours)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- responses -----------------------------------------------------------------------

    def respond(self, h: BaseHTTPRequestHandler, behaviour: str, body: dict[str, Any]) -> None:
        if behaviour == "hang":
            time.sleep(self.hang_s)
            return
        if behaviour == "reset":
            # SO_LINGER 0: closing sends a TCP reset instead of a response.
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            return
        if behaviour in ("500", "429", "400"):
            status = int(behaviour)
            message = {"500": "internal error", "429": "too many requests", "400": "prompt is too long (9000 > 8192)"}
            self._json(h, status, {"error": {"message": message[behaviour], "type": "x"}}, retry_after=(status == 429))
            return
        if behaviour == "echo-key":
            key = str(h.headers.get("Authorization", "")).removeprefix("Bearer ")
            self._json(h, 401, {"error": {"message": f"Incorrect API key provided: {key}.", "type": "auth"}})
            return
        if behaviour == "malformed":
            self._raw(h, 200, b"{this is not json", "application/json")
            return
        if body.get("echo") and body.get("logprobs") and behaviour == "ok":
            self._json(h, 200, {"choices": [echo_choice(str(body["prompt"]))]})
            return
        words = self.responder(body) if self.responder is not None else self.words
        n = min(int(body.get("max_tokens", 16)), len(words))
        tokens = words[:n] if behaviour != "empty" else []
        # An empty completion says "stop", as the faulty servers seen in the wild do.
        finish = "length" if n < len(words) and behaviour != "empty" else "stop"
        stop_reason = None
        if body.get("stream"):
            eos = finish == "stop" and behaviour != "empty"
            self._stream(h, tokens, finish, break_after=2 if behaviour == "midstream" else None, eos=eos)
            return
        text = "".join(tokens)
        stops = [x for x in body.get("stop") or [] if x in text]
        if stops:
            stop_reason = min(stops, key=text.find)
            text = text[: text.find(stop_reason)]
            finish = "stop"
        # The end-of-sequence token (or the stop string's tokens) is generated, and counted.
        completion = len(tokens) + (1 if finish == "stop" and behaviour != "empty" and not stops else 0)
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish, "stop_reason": stop_reason}
        if body.get("logprobs"):
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": [-0.1] * len(tokens)}
        usage: dict[str, Any] = {"prompt_tokens": 7, "completion_tokens": completion}
        usage["prompt_tokens_details"] = 7 if behaviour == "odd-usage" else {"cached_tokens": 3}
        self._json(h, 200, {"choices": [choice], "usage": usage})

    def _raw(
        self, h: BaseHTTPRequestHandler, status: int, data: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _json(self, h: BaseHTTPRequestHandler, status: int, obj: object, retry_after: bool = False) -> None:
        self._raw(
            h, status, json.dumps(obj).encode(), "application/json", {"Retry-After": "0"} if retry_after else None
        )

    def _stream(
        self, h: BaseHTTPRequestHandler, tokens: list[str], finish: str, break_after: int | None, eos: bool = False
    ) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        for i, tok in enumerate(tokens):
            if break_after is not None and i == break_after:
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.connection.close()
                return
            event = {"choices": [{"index": 0, "text": tok, "finish_reason": None}]}
            h.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            h.wfile.flush()
        last = {"choices": [{"index": 0, "text": "", "finish_reason": finish}]}
        usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": len(tokens) + eos}}
        h.wfile.write(f"data: {json.dumps(last)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        h.wfile.flush()


def echo_choice(prompt: str) -> dict[str, Any]:
    """An echoed prompt scored word by word, then the generated token " !"."""
    words = [*re.findall(r"\n|[^\S\n]*\S+|[^\S\n]+", prompt), " !"]
    offsets = [sum(len(w) for w in words[:i]) for i in range(len(words))]
    values: list[float | None] = [None] + [-len(w) / 10 for w in words[1:]]
    logprobs = {"tokens": words, "token_logprobs": values, "text_offset": offsets, "top_logprobs": None}
    return {"index": 0, "text": "".join(words), "logprobs": logprobs, "finish_reason": "length"}


def dead_url() -> str:
    """The URL of a port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"
