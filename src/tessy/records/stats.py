"""The counters of a run: one type, summed one sample at a time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .sample import SampleResult, add_costs, ratio
from .stored import FailureRecord, Record

__all__ = ["RunStats"]


@dataclass
class RunStats:
    """The counters of a run, summed one sample at a time by :meth:`add`: live from the
    engine's results during synthesis, or from a run's files by the report (the same numbers
    for the same samples). Token counts are in each role's own tokenizer."""

    #: Finished samples, and failed ones by kind of failure.
    written: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    #: Tokens of finished samples, by who wrote them; and their thinking (from the spans).
    teacher_tokens: int = 0
    student_tokens: int = 0
    think_tokens: int = 0
    teacher_think_tokens: int = 0
    switches: int = 0
    #: What every sample cost, finished or failed.
    requests: int = 0
    failed_requests: int = 0
    #: Requests tried again after a fault (a 5xx, a broken stream...) and then answered.
    retried_requests: int = 0
    discarded_tokens: int = 0
    #: Requests whose prompt did not extend the same role's previous prompt (see SampleStats).
    prefix_misses: int = 0
    #: Hand-overs written again because the role taking the turn carried on the giver's word.
    glued_handoffs: int = 0
    #: Prompt tokens of requests whose server reported its prefix-cache hits, and those hits.
    reported_prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    guards: Counter[str] = field(default_factory=Counter)
    #: Of ``requests``: those that scored text (comparison modes), and candidates written.
    score_requests: int = 0
    candidates: int = 0

    def add(self, item: SampleResult | Record | FailureRecord) -> None:
        """Count one sample: an engine result, or a record or failure record read back."""
        failure = item.failure if isinstance(item, (SampleResult, FailureRecord)) else None
        stats = item.stats
        add_costs(self, stats)
        self.guards.update(stats.guards)
        if failure is not None:
            self.failed[failure.kind] += 1
            return
        self.written += 1
        self.teacher_tokens += stats.teacher_tokens
        self.student_tokens += stats.student_tokens
        self.switches += stats.switches
        for span in item.spans:
            if span.phase == "think":
                self.think_tokens += span.tokens
                if span.source == "teacher":
                    self.teacher_think_tokens += span.tokens

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    @property
    def total_tokens(self) -> int:
        return self.teacher_tokens + self.student_tokens

    @property
    def teacher_share(self) -> float:
        return ratio(self.teacher_tokens, self.total_tokens)

    @property
    def teacher_think_share(self) -> float:
        return ratio(self.teacher_think_tokens, self.think_tokens)

    @property
    def switches_per_sample(self) -> float:
        return ratio(self.switches, self.written)

    @property
    def cache_hit_rate(self) -> float | None:
        """The share of prompt tokens the servers' prefix caches served, over the requests whose
        server reported it; ``None`` when none did."""
        if not self.reported_prompt_tokens:
            return None
        return ratio(self.cached_prompt_tokens, self.reported_prompt_tokens)

    @property
    def discarded_per_kept(self) -> float:
        return ratio(self.discarded_tokens, self.total_tokens)

    @property
    def requests_per_kept_token(self) -> float:
        """Requests (scoring ones included, failed samples' too) per token in the records."""
        return ratio(self.requests, self.total_tokens)

    @property
    def generated_per_kept_token(self) -> float:
        """Tokens generated (kept or discarded) per token in the records: what each kept token cost."""
        return ratio(self.total_tokens + self.discarded_tokens, self.total_tokens)
