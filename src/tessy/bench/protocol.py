"""vLLM's OpenAI-compatible ``/v1/completions`` wire format, over a simulated engine's requests.

Reading a request body (:class:`CompletionRequest`), and writing the bodies that answer it: a
whole completion (:func:`completion_body`), the chunks of a stream (:class:`CompletionStream`),
``usage``, legacy-form ``logprobs``, ``prompt_logprobs``, ``return_token_ids``, and errors
(:func:`error_body`). Bytes on the wire are :mod:`tessy.bench.http`'s business; running the
request is the engine's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from .engine import SimEngine, SimRequest
from .http import HttpError

__all__ = ["CompletionRequest", "CompletionStream", "completion_body", "error_body"]

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed", 413: "BadRequestError"}


def error_body(exc: HttpError) -> dict[str, Any]:
    """An error as OpenAI's API writes it."""
    status = exc.status
    return {
        "error": {"message": str(exc), "type": _ERROR_TYPES.get(status, "Error"), "param": exc.param, "code": status}
    }


class CompletionRequest:
    """A validated ``/v1/completions`` request body; ``model`` is one of ``models`` (default: the first)."""

    def __init__(self, body: dict[str, Any], models: Mapping[str, object]) -> None:
        model = body.get("model")
        if model is None:
            model = next(iter(models))
        if not isinstance(model, str) or model not in models:
            raise HttpError(404, f"The model `{model}` does not exist.", "model")
        self.model = model
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            self.prompt: str | list[int] = prompt
        elif (
            isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            self.prompt = list(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            raise HttpError(400, "this simulated server takes one prompt per request", "prompt")
        else:
            raise HttpError(400, "prompt must be a string or a non-empty list of token ids", "prompt")
        self.max_tokens = self._int(body, "max_tokens", 16, minimum=1)
        n = self._int(body, "n", 1, minimum=1)
        if n != 1:
            raise HttpError(400, "this simulated server returns one choice (n=1)", "n")
        if body.get("echo"):
            raise HttpError(400, "echo is not supported by this simulated server", "echo")
        stop = body.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise HttpError(400, "stop must be a string or a list of strings", "stop")
        self.stop: list[str] = stop
        stop_ids = body.get("stop_token_ids") or []
        if not isinstance(stop_ids, list) or not all(isinstance(t, int) for t in stop_ids):
            raise HttpError(400, "stop_token_ids must be a list of integers", "stop_token_ids")
        self.stop_token_ids: list[int] = stop_ids
        self.min_tokens = self._int(body, "min_tokens", 0, minimum=0)
        self.ignore_eos = bool(body.get("ignore_eos", False))
        self.include_stop = bool(body.get("include_stop_str_in_output", False))
        seed = body.get("seed")
        if seed is not None and not isinstance(seed, int):
            raise HttpError(400, "seed must be an integer", "seed")
        self.seed: int | None = seed
        for name in ("temperature", "top_p", "min_p", "top_k", "repetition_penalty"):
            value = body.get(name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise HttpError(400, f"{name} must be a number", name)
        self.logprobs = self._optional_int(body, "logprobs")
        self.prompt_logprobs = self._optional_int(body, "prompt_logprobs")
        self.return_token_ids = bool(body.get("return_token_ids", False))
        self.stream = bool(body.get("stream", False))
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise HttpError(400, "stream_options must be an object", "stream_options")
        if options and not self.stream:
            raise HttpError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
        self.include_usage = bool(options.get("include_usage", False))
        self.continuous_usage = bool(options.get("continuous_usage_stats", False))

    @staticmethod
    def _int(body: dict[str, Any], name: str, default: int, *, minimum: int) -> int:
        value = body.get(name, default)
        if value is None:
            value = default
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise HttpError(400, f"{name} must be an integer of at least {minimum}", name)
        return value

    @staticmethod
    def _optional_int(body: dict[str, Any], name: str) -> int | None:
        value = body.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 20:
            raise HttpError(400, f"{name} must be an integer from 0 to 20", name)
        return value


def _envelope(spec: CompletionRequest) -> dict[str, Any]:
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": spec.model,
    }


def _usage(r: SimRequest, n_tokens: int | None = None) -> dict[str, Any]:
    completion = len(r.output_ids) if n_tokens is None else n_tokens
    return {
        "prompt_tokens": len(r.prompt_ids),
        "total_tokens": len(r.prompt_ids) + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": r.cached_tokens},
    }


def _logprobs(engine: SimEngine, r: SimRequest, start: int, end: int, k: int, offset: int) -> dict[str, Any]:
    """Output tokens ``start:end`` in the legacy completions form; ``offset``: the text offset of ``start``."""
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top: list[dict[str, float]] = []
    offsets: list[int] = []
    n_prompt = len(r.prompt_ids)
    for i in range(start, end):
        prev = r.all_ids[n_prompt + i - 1]
        tid = r.output_ids[i]
        ranked = engine.model.top_logprobs(prev, tid, k)
        text = engine.tok.piece(tid)
        tokens.append(text)
        token_logprobs.append(ranked[0][1])
        top.append({engine.tok.piece(t): lp for t, lp in ranked})
        offsets.append(offset)
        offset += len(text)
    return {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": tokens, "top_logprobs": top}


def _prompt_logprobs(engine: SimEngine, r: SimRequest, k: int) -> list[Any]:
    out: list[Any] = [None]
    ids = r.prompt_ids
    for i in range(1, len(ids)):
        ranked = engine.model.top_logprobs(ids[i - 1], ids[i], k)
        out.append(
            {
                str(t): {"logprob": lp, "rank": rank, "decoded_token": engine.tok.piece(t)}
                for rank, (t, lp) in enumerate(ranked, start=1)
            }
        )
    return out


def completion_body(spec: CompletionRequest, engine: SimEngine, r: SimRequest) -> dict[str, Any]:
    """The response to a finished, unstreamed request."""
    n = len(r.output_ids)
    choice = {
        "index": 0,
        "text": r.text,
        "logprobs": None if spec.logprobs is None else _logprobs(engine, r, 0, n, spec.logprobs, 0),
        "finish_reason": r.finish_reason,
        "stop_reason": r.stop_reason,
        "token_ids": list(r.output_ids) if spec.return_token_ids else None,
        "prompt_logprobs": None if spec.prompt_logprobs is None else _prompt_logprobs(engine, r, spec.prompt_logprobs),
        "prompt_token_ids": list(r.prompt_ids) if spec.return_token_ids else None,
    }
    return {
        **_envelope(spec),
        "choices": [choice],
        "usage": _usage(r),
        "system_fingerprint": None,
        "kv_transfer_params": None,
    }


class CompletionStream:
    """The chunks of a streamed request, each with what the engine made since the last.

    With stop strings, text is held back by up to the longest one less one character, as vLLM's
    detokenizer does, so a chunk may carry token ids and no text; the first chunk carries the
    prompt's ids (``return_token_ids``).
    """

    def __init__(self, spec: CompletionRequest, engine: SimEngine, r: SimRequest) -> None:
        self.spec = spec
        self.engine = engine
        self.request = r
        self._envelope = _envelope(spec)
        self._hold = 0 if spec.include_stop else max((len(s) for s in spec.stop), default=1) - 1
        self._sent_tokens = 0
        self._sent_text = 0

    def next_chunk(self) -> dict[str, Any] | None:
        """The chunk for what is new, or ``None`` when nothing is (and the request goes on)."""
        spec, r = self.spec, self.request
        sent_tokens, sent_text = self._sent_tokens, self._sent_text
        n = len(r.output_ids)
        end_text = len(r.text) if r.done else max(sent_text, len(r.text) - self._hold)
        if n == sent_tokens and end_text == sent_text and not r.done:
            return None
        choice: dict[str, Any] = {
            "index": 0,
            "text": r.text[sent_text:end_text],
            "logprobs": None
            if spec.logprobs is None
            else _logprobs(self.engine, r, sent_tokens, n, spec.logprobs, sent_text),
            "finish_reason": r.finish_reason if r.done else None,
            "stop_reason": r.stop_reason if r.done else None,
            "token_ids": r.output_ids[sent_tokens:n] if spec.return_token_ids else None,
            "prompt_token_ids": list(r.prompt_ids) if spec.return_token_ids and sent_tokens == 0 else None,
        }
        self._sent_tokens, self._sent_text = n, end_text
        return {**self._envelope, "choices": [choice], "usage": _usage(r, n) if spec.continuous_usage else None}

    def usage_chunk(self) -> dict[str, Any] | None:
        """The last chunk, with the whole request's usage (``stream_options.include_usage``)."""
        if not self.spec.include_usage:
            return None
        return {**self._envelope, "choices": [], "usage": _usage(self.request)}
