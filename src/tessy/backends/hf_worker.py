"""The hf backend's model thread: admits requests, prefills them, decodes the batch.

See :mod:`tessy.backends.hf` for what it does; this module holds how. Only this thread touches
the model, the batch and the per-sample KV caches, so none of them needs a lock; the event
loop's side talks to it through a queue (requests and releases in) and thread-safe callbacks
(tokens out). The worker knows the backend only as a :class:`ModelHost` (what it reads from it).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import BackendError
from ..hf import cache_tensors
from ..tokenizers import HFTokenizer, PieceDecoder
from .base import FinishReason, GenerateRequest, Generation, StreamDelta
from .sampling import make_generator, sample_token

__all__ = ["Deliver", "HFStats", "Job", "ModelHost", "Release", "Worker"]

logger = logging.getLogger(__name__)

#: Tokens a generation may run past max_tokens to finish a character split over tokens.
_FINISH_CHARACTER = 3

#: Called from the worker thread with stream deltas, a Generation or an error.
Deliver = Callable[[object], None]


@dataclass
class HFStats:
    """What the backend did, for benchmarks and reports."""

    requests: int = 0
    #: Sum of the prompts' lengths (what a server without a prefix cache would prefill).
    prompt_tokens: int = 0
    #: Prompt tokens actually fed to the model (the rest came from a sample's cache).
    prefill_tokens: int = 0
    generated_tokens: int = 0
    #: Requests whose prompt did not extend the previous prompt of their (sample, role).
    cache_misses: int = 0
    evictions: int = 0
    forward_passes: int = 0
    decode_steps: int = 0
    #: Rows summed over decode steps (divide by ``decode_steps`` for the mean batch size).
    decode_rows: int = 0
    #: Tokens held now in per-sample KV caches (a gauge: released samples hold none).
    cached_tokens: int = 0
    #: (sample, role) caches held now.
    cached_sequences: int = 0

    @property
    def prefill_per_generated(self) -> float:
        return self.prefill_tokens / self.generated_tokens if self.generated_tokens else 0.0

    @property
    def mean_batch(self) -> float:
        return self.decode_rows / self.decode_steps if self.decode_steps else 0.0


class ModelHost(Protocol):
    """What the worker reads from its backend (read live: a test may change ``eos_ids``)."""

    torch: Any
    model: Any
    tokenizer: HFTokenizer
    device: Any
    name: str
    max_batch_size: int
    cache_tokens: int
    max_positions: int | None
    eos_ids: frozenset[int]
    stats: HFStats
    #: The name of the model's cache argument (``cache`` or ``past_key_values``).
    cache_arg: str
    #: Whether the model takes ``logits_to_keep``.
    keep_logits: bool
    #: Taken around each forward pass (models on one device take turns).
    device_lock: threading.Lock


@dataclass(eq=False)
class Job:
    """One request handed to the worker (``cancelled`` is set from the event loop's side)."""

    request: GenerateRequest
    prompt: list[int]
    deliver: Deliver
    stream: bool
    cancelled: bool = False

    #: Cleared when the sample is released while this job runs: its cache is then not kept.
    keep_cache: bool = True

    @property
    def key(self) -> tuple[str, str]:
        return (self.request.sample_id, self.request.role)


@dataclass(eq=False)
class Release:
    """The sample is over: drop its caches, then call ``done`` (with ``None``)."""

    sample_id: str
    done: Deliver


@dataclass(eq=False)
class _SampleCache:
    """The KV cache of one (sample, role): ``ids`` are the tokens whose keys and values it holds."""

    ids: list[int]
    kv: list[tuple[Any, Any]]
    prompt_len: int


@dataclass(eq=False)
class _Row:
    """One request being decoded."""

    job: Job
    ids: list[int]  # tokens in this row's cache
    decoder: PieceDecoder
    generator: Any
    next_token: int = -1
    pieces: list[str] = field(default_factory=list)
    gen_ids: list[int] = field(default_factory=list)
    finish: FinishReason | None = None
    stop_reason: str | None = None
    recent: str = ""  # the text's last characters, to find stop strings spanning pieces
    text_len: int = 0
    sent: int = 0  # pieces already streamed


class Worker:
    """The model's thread: admits requests, prefills them, decodes the batch."""

    def __init__(self, host: ModelHost, inbox: queue.SimpleQueue[Job | Release | None]) -> None:
        self.b = host
        self.inbox = inbox
        self.torch = host.torch
        self.stats = host.stats
        self.caches: OrderedDict[tuple[str, str], _SampleCache] = OrderedDict()
        self.rows: list[_Row] = []
        self.pads: list[int] = []
        self.cache: Any = None  # the batch's DynamicCache
        self.length = 0  # its (padded) length
        self.waiting: list[Job] = []
        self.stopping = False

    def run(self) -> None:
        try:
            with self.torch.inference_mode():
                while True:
                    self._take()
                    if self.stopping:
                        break
                    while self.waiting and len(self.rows) < self.b.max_batch_size:
                        self._admit(self.waiting.pop(0))
                    if self.rows:
                        self._guarded(self._step)
        finally:
            error = BackendError("the hf backend was closed", retryable=False)
            left: list[Job | Release] = [r.job for r in self.rows]
            left.extend(self.waiting)
            self.rows, self.waiting, self.cache = [], [], None
            self.caches.clear()
            self._count_caches()
            while True:  # what was queued behind the end: nobody may wait for ever
                try:
                    item = self.inbox.get(block=False)
                except queue.Empty:
                    break
                if item is not None:
                    left.append(item)
            for item in left:
                if isinstance(item, Release):
                    item.done(None)
                else:
                    item.deliver(error)

    def _take(self) -> None:
        """Move queued jobs to ``waiting``; block only when there is nothing else to do."""
        block = not self.rows and not self.waiting and not self.stopping
        while True:
            try:
                job = self.inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if job is None:
                self.stopping = True
            elif isinstance(job, Release):
                self._release(job.sample_id)
                job.done(None)
            elif not job.cancelled:
                self.waiting.append(job)

    def _release(self, sample_id: str) -> None:
        """Drop the sample's caches, and keep none from its requests still running."""
        for key in [k for k in self.caches if k[0] == sample_id]:
            del self.caches[key]
        for job in [r.job for r in self.rows] + self.waiting:
            if job.request.sample_id == sample_id:
                job.keep_cache = False
        self._count_caches()

    def _count_caches(self) -> None:
        self.stats.cached_tokens = sum(len(c.ids) for c in self.caches.values())
        self.stats.cached_sequences = len(self.caches)

    def _guarded(self, work: Callable[[], None], job: Job | None = None) -> None:
        """Run ``work``; if the model fails, fail that one request (``job``, a prefill) or the
        whole batch (a decode step), and keep serving."""
        try:
            work()
        except Exception as exc:
            logger.warning("hf backend %s: %s", self.b.name, exc, exc_info=True)
            text = str(exc)
            error = BackendError(f"the model failed: {text}", retryable="out of memory" in text.lower())
            if job is not None:
                victims = [job]
            else:
                victims = [r.job for r in self.rows]
                self.rows, self.pads, self.cache, self.length = [], [], None, 0
            for victim in victims:
                victim.deliver(error)

    # -- prefill -------------------------------------------------------------------------

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            return
        self._guarded(lambda: self._prefill(job), job)

    def _prefill(self, job: Job) -> None:
        torch, b = self.torch, self.b
        prompt = job.prompt
        if b.max_positions is not None and len(prompt) >= b.max_positions:
            job.deliver(
                BackendError(
                    f"the prompt has {len(prompt)} tokens, the model at most {b.max_positions}", retryable=False
                )
            )
            return
        self.stats.requests += 1
        self.stats.prompt_tokens += len(prompt)
        state = self.caches.pop(job.key, None)
        kv: list[tuple[Any, Any]] = []
        reuse = 0
        if state is not None:
            self.stats.cached_tokens -= len(state.ids)
            self.stats.cached_sequences -= 1
            common = _common_prefix(state.ids, prompt)
            if common < state.prompt_len:
                self.stats.cache_misses += 1
            reuse = min(common, len(prompt) - 1)  # at least one token must be fed for logits
            if reuse:
                kv = [(k[:, :, :reuse], v[:, :, :reuse]) for k, v in state.kv]
        cache = _new_cache(b.model, kv)
        fed = prompt[reuse:]
        self.stats.prefill_tokens += len(fed)
        logits = self._forward(
            torch.tensor([fed], device=b.device),
            torch.arange(reuse, len(prompt), device=b.device).unsqueeze(0),
            None,
            cache,
            last_only=True,
        )
        request = job.request
        row = _Row(
            job=job,
            ids=list(prompt),
            decoder=b.tokenizer.piece_decoder(prompt),
            generator=make_generator(
                torch, request.sampling, f"{request.sample_id}:{request.role}:{len(prompt)}", b.device
            ),
        )
        self._accept(row, logits[0, -1])
        if row.finish is not None:
            self._finish(row, cache_tensors(cache))
        else:
            self._join(row, cache)

    # -- the batch -----------------------------------------------------------------------

    def _join(self, row: _Row, cache: Any) -> None:
        torch = self.torch
        if not self.rows:
            self.rows, self.pads, self.cache, self.length = [row], [0], cache, len(row.ids)
            return
        kv_new = cache_tensors(cache)
        kv_batch = cache_tensors(self.cache)
        n = len(row.ids)
        if n > self.length:
            grow = n - self.length
            kv_batch = [(_pad_left(torch, k, grow), _pad_left(torch, v, grow)) for k, v in kv_batch]
            self.pads = [p + grow for p in self.pads]
            self.length = n
        pad = self.length - n
        merged = [
            (torch.cat([kb, _pad_left(torch, kn, pad)]), torch.cat([vb, _pad_left(torch, vn, pad)]))
            for (kb, vb), (kn, vn) in zip(kv_batch, kv_new, strict=True)
        ]
        self.cache = _new_cache(self.b.model, merged)
        self.rows.append(row)
        self.pads.append(pad)

    def _leave(self, indices: Sequence[int]) -> list[list[tuple[Any, Any]]]:
        """Take rows out of the batch; returns each one's own cache (unpadded copies)."""
        torch = self.torch
        kv_batch = cache_tensors(self.cache)
        out = []
        for i in indices:
            p = self.pads[i]
            out.append([(k[i : i + 1, :, p:].clone(), v[i : i + 1, :, p:].clone()) for k, v in kv_batch])
        keep = [i for i in range(len(self.rows)) if i not in set(indices)]
        if not keep:
            self.rows, self.pads, self.cache, self.length = [], [], None, 0
            return out
        trim = min(self.pads[i] for i in keep)  # left padding no remaining row needs
        index = torch.tensor(keep, device=self.b.device)
        kv = [(k.index_select(0, index)[:, :, trim:], v.index_select(0, index)[:, :, trim:]) for k, v in kv_batch]
        self.cache = _new_cache(self.b.model, kv)
        self.rows = [self.rows[i] for i in keep]
        self.pads = [self.pads[i] - trim for i in keep]
        self.length -= trim
        return out

    def _step(self) -> None:
        torch, b = self.torch, self.b
        rows = self.rows
        tokens = torch.tensor([[r.next_token] for r in rows], device=b.device)
        positions = torch.tensor([[len(r.ids)] for r in rows], device=b.device)
        mask = torch.ones(len(rows), self.length + 1, dtype=torch.long, device=b.device)
        for i, pad in enumerate(self.pads):
            if pad:
                mask[i, :pad] = 0
        logits = self._forward(tokens, positions, mask if any(self.pads) else None, self.cache, last_only=True)
        self.length += 1
        self.stats.decode_steps += 1
        self.stats.decode_rows += len(rows)
        done = []
        for i, row in enumerate(rows):
            row.ids.append(row.next_token)
            if row.job.cancelled:
                row.finish = row.finish or "stop"
            else:
                self._accept(row, logits[i, -1])
            if row.finish is not None:
                done.append(i)
        if done:
            finished = [rows[i] for i in done]
            for row, kv in zip(finished, self._leave(done), strict=True):
                self._finish(row, kv)

    def _forward(self, tokens: Any, positions: Any, mask: Any, cache: Any, *, last_only: bool) -> Any:
        kwargs: dict[str, Any] = {
            "input_ids": tokens,
            "position_ids": positions,
            "attention_mask": mask,
            self.b.cache_arg: cache,
            "use_cache": True,
        }
        if last_only and self.b.keep_logits:
            kwargs["logits_to_keep"] = 1
        self.stats.forward_passes += 1
        with self.b.device_lock:
            return self.b.model(**kwargs).logits

    # -- tokens --------------------------------------------------------------------------

    def _accept(self, row: _Row, logits: Any) -> None:
        """Sample the row's next token and take it into its text (or finish the row)."""
        request = row.job.request
        token = sample_token(self.torch, logits, request.sampling, generator=row.generator, history=row.ids[-1024:])
        self.stats.generated_tokens += 1
        if token in self.b.eos_ids:
            row.finish = "stop"
            return
        row.next_token = token
        piece = row.decoder.add(token)
        row.pieces.append(piece)
        row.gen_ids.append(token)
        if request.stop and piece:
            window = row.recent + piece
            hits = [(at, s) for s in request.stop if (at := window.find(s)) >= 0]
            if hits:
                at, stop = min(hits)
                _cut_at(row, row.text_len - len(row.recent) + at)
                row.finish, row.stop_reason = "stop", stop
                return
            longest = max(len(s) for s in request.stop)
            row.recent = window[-(longest - 1) :] if longest > 1 else ""
        row.text_len += len(piece)
        if len(row.pieces) >= request.max_tokens:
            over = len(row.pieces) - request.max_tokens
            if not row.decoder.holding or over >= _FINISH_CHARACTER:
                if row.decoder.holding:
                    row.pieces[-1] += row.decoder.flush()
                row.finish = "length"
                return
        if self.b.max_positions is not None and len(row.ids) + 1 >= self.b.max_positions:
            row.finish = "length"
            return
        if row.job.stream:
            self._send(row)

    def _send(self, row: _Row) -> None:
        """Stream the pieces that no stop string can still claim."""
        hold = _stop_prefix_len(row.recent, row.job.request.stop) if row.job.request.stop else 0
        end = len(row.pieces)
        held = 0
        while end > row.sent and held < hold:
            end -= 1
            held += len(row.pieces[end])
        if end > row.sent:
            row.job.deliver(StreamDelta(row.pieces[row.sent : end], list(row.gen_ids[row.sent : end])))
            row.sent = end

    def _finish(self, row: _Row, kv: list[tuple[Any, Any]]) -> None:
        job = row.job
        key = job.key
        if job.keep_cache and self.b.cache_tokens:
            self.caches[key] = _SampleCache(row.ids, kv, len(job.prompt))
            self.stats.cached_tokens += len(row.ids)
            self.stats.cached_sequences += 1
            while self.stats.cached_tokens > self.b.cache_tokens and len(self.caches) > 1:
                _, old = self.caches.popitem(last=False)
                self.stats.cached_tokens -= len(old.ids)
                self.stats.cached_sequences -= 1
                self.stats.evictions += 1
        if job.cancelled:
            return
        finish = row.finish or "stop"
        ids = row.gen_ids[: len(row.pieces)]
        if job.stream:
            job.deliver(StreamDelta(row.pieces[row.sent :], ids[row.sent :], finish, row.stop_reason))
        else:
            job.deliver(Generation(row.pieces, finish, ids, row.stop_reason, prompt_tokens=len(job.prompt)))


def _cut_at(row: _Row, at: int) -> None:
    """Cut the row's text at character ``at``; a piece cut inside loses its id."""
    pos = 0
    for i, piece in enumerate(row.pieces):
        if pos + len(piece) > at:
            if at > pos:
                row.pieces[i] = piece[: at - pos]
                del row.pieces[i + 1 :]
                del row.gen_ids[i:]
            else:
                del row.pieces[i:]
                del row.gen_ids[i:]
            return
        pos += len(piece)


def _stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could begin a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _new_cache(model: Any, kv: Sequence[tuple[Any, Any]]) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(kv):
        cache.update(k, v, layer)
    return cache


def _pad_left(torch: Any, t: Any, n: int) -> Any:
    if n <= 0:
        return t
    shape = list(t.shape)
    shape[2] = n
    return torch.cat([t.new_zeros(shape), t], dim=2)
