"""The classifier predictor: alignment to the chunk's pieces, batching, and causal reuse."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tessy import Engine, Limits, Role, Sample, get_format
from tessy.boundary import CutQuery, TokenType
from tessy.boundary.classifier import ClassifierPredictor, piece_next_types, token_starts
from tessy.build import build_predictor
from tessy.config import ClassifierPredictorConfig, load_config
from tessy.errors import BoundaryError, ConfigError
from tessy.fakes import ScriptedBackend
from tessy.text import TextView
from tessy.tokenizers import FakeTokenizer

S, C = TokenType.STYLE, TokenType.CAPABILITY

TEXT = (
    "Okay, so I need to add 17 and 25. Let me add the units first: 7 + 5 = 12. Hmm, that carries one. "
    "So the total is 42. Wait, let me double-check: 42 - 25 = 17. Now the function loops over the list "
    "and keeps a running total in O(n) time. But if the list is empty, the sum is 0. "
)


# -- alignment (no model) ----------------------------------------------------------------


def test_a_tokens_alignment_start_skips_its_leading_whitespace():
    text = "a  so\n\nx"
    assert token_starts(text, [(0, 1), (1, 5), (5, 7), (7, 8)]) == [0, 3, 5, 7]  # "\n\n" is all space


def bounds(pieces: Sequence[str], start: int = 0) -> list[tuple[int, int]]:
    out, pos = [], start
    for p in pieces:
        out.append((pos, pos + len(p)))
        pos += len(p)
    return out


def test_same_tokenization_maps_position_to_position():
    # Predictor tokens == pieces: the type at piece j is the output at token j.
    pieces = ["Okay", ",", " so", " I"]
    probs = [0.9, 0.8, 0.1, 0.7]
    assert piece_next_types(bounds(pieces), token_starts("".join(pieces), bounds(pieces)), probs, 0.5) == [S, S, C, S]


def test_pieces_finer_than_the_predictors_tokens_have_no_type_inside_a_token():
    # Pieces " comp" "uter" " now" against predictor tokens " computer" " now".
    pieces = [" comp", "uter", " now"]
    text = "".join(pieces)
    tokens = [(0, 9), (9, 13)]
    probs = [0.9, 0.2]  # after " computer": style; after " now": capability
    types = piece_next_types(bounds(pieces), token_starts(text, tokens), probs, 0.5)
    # j=0: piece 1 "uter" starts no token -> unknown; j=1: piece 2 starts " now" -> output at " computer";
    # j=2 (last): the output at the last token.
    assert types == [None, S, C]


def test_pieces_coarser_than_the_predictors_tokens_read_the_first_token_in_the_next_piece():
    pieces = ["Okay,", " so I", " add"]
    text = "".join(pieces)
    tokens = [(0, 4), (4, 5), (5, 8), (8, 10), (10, 14)]  # Okay | , | " so" | " I" | " add"
    probs = [0.9, 0.8, 0.3, 0.2, 0.6]
    # j=0: first token in " so I" is " so" (index 2) -> output at 1 (0.8); j=1: " add" -> output at 3.
    assert piece_next_types(bounds(pieces), token_starts(text, tokens), probs, 0.5) == [S, C, S]


def test_context_before_the_chunk_and_the_threshold():
    context = "We know x. "
    pieces = ["Now", " y"]
    text = context + "".join(pieces)
    tokens = [(0, 2), (2, 7), (7, 9), (9, 10), (10, 14), (14, 16)]
    assert [text[a:b] for a, b in tokens] == ["We", " know", " x", ".", " Now", " y"]
    probs = [0.1, 0.1, 0.1, 0.6, 0.4, 0.55]
    b = bounds(pieces, start=len(context))
    assert piece_next_types(b, token_starts(text, tokens), probs, 0.5) == [C, S]
    assert piece_next_types(b, token_starts(text, tokens), probs, 0.35) == [S, S]
    assert piece_next_types(b, token_starts(text, tokens), probs, 0.6) == [C, C]


# -- the real (tiny) model ---------------------------------------------------------------

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import save_tiny_backbone

    return save_tiny_backbone(tmp_path_factory.mktemp("tiny") / "ckpt")


def load(checkpoint: Path, **kwargs: Any) -> ClassifierPredictor:
    return ClassifierPredictor.load(checkpoint, device="cpu", **kwargs)


async def walk(pred: ClassifierPredictor, sample: str, chunk: int = 7, keep: int = 4, rounds: int = 40) -> list[Any]:
    """Feed a sample's text chunk by chunk, keeping only part of each chunk (as after a cut)."""
    pieces = FakeTokenizer().pieces(TEXT * 8)
    context = ""
    out = []
    i = 0
    for _ in range(rounds):
        part = pieces[i : i + chunk]
        if not part:
            break
        types = await pred._batcher.submit(pred._request(TextView.of(context), part, (sample, "teacher")))
        out.append(types)
        context += "".join(part[:keep])
        i += keep
    return out


async def test_reuse_gives_the_same_answers_as_re_encoding_and_encodes_far_fewer_tokens(checkpoint: Path):
    reuse = load(checkpoint, window=2000)
    fresh = load(checkpoint, window=2000, reuse=False)
    assert reuse.reuse and reuse.model.causal and not fresh.reuse
    a = await walk(reuse, "s")
    b = await walk(fresh, "s")
    assert a == b
    assert any(S in t for t in a) and any(C in t for t in a)  # not a constant model
    assert reuse.stats.reused >= len(a) - 1
    assert reuse.stats.tokens_encoded * 5 < fresh.stats.tokens_encoded
    await reuse.aclose()
    await fresh.aclose()


async def test_a_reused_window_holds_exactly_what_encoding_its_text_afresh_gives(checkpoint: Path):
    pred = load(checkpoint, window=60, reuse_margin=20)
    await walk(pred, "s", rounds=60)
    state = pred._states[("s", "teacher")]
    ids, _ = pred.model.tokenize(state.text)
    assert state.ids == ids  # re-tokenizing from word starts kept the tokenization whole-text exact
    [(probs, _)] = pred.model.forward([(ids, None)], want_past=False)
    assert state.probs == pytest.approx(probs, abs=1e-4)
    # The window grew by reuse, then was re-encoded from its last `window` tokens.
    assert len(state.ids) <= 60 + 20 + 16
    assert pred.stats.reencoded > 1 and pred.stats.reused > pred.stats.reencoded
    await pred.aclose()


async def test_the_window_is_left_truncated(checkpoint: Path):
    pred = load(checkpoint, window=12, reuse=False)
    long_context = TEXT * 3
    types = pred.next_token_types(TextView.of(long_context), [" the", " list", " is"])
    assert len(types) == 3
    # Only the last 12 tokens (back to a word start) are read: far-away text changes nothing.
    other = "Completely different words " * 20 + long_context[-200:]
    assert pred.next_token_types(TextView.of(other), [" the", " list", " is"]) == types
    await pred.aclose()


def test_batched_forwards_with_different_cached_lengths_match_single_forwards(checkpoint: Path):
    pred = load(checkpoint)
    model = pred.model
    texts = ["Okay, so I need to add", " 17 + 25 = 42. Now", "Hmm"]
    singles = []
    pasts = []
    for t in texts:
        ids, _ = model.tokenize(t)
        cut = len(ids) // 2
        [(_, past)] = model.forward([(ids[:cut], None)], want_past=True) if cut else [([], None)]
        pasts.append((ids, cut, past))
        [(probs, _)] = model.forward([(ids, None)], want_past=False)
        singles.append(probs)
    batched = model.forward([(ids[cut:], past) for ids, cut, past in pasts], want_past=True)
    for (ids, cut, _), single, (probs, past) in zip(pasts, singles, batched, strict=True):
        assert probs == pytest.approx(single[cut:], abs=1e-4)
        assert past[0][0].shape[2] == len(ids)  # the returned cache covers old and new tokens


async def test_the_engine_batches_queries_from_many_samples(checkpoint: Path):
    def engine(max_batch: int) -> tuple[Engine, ClassifierPredictor, ClassifierPredictor]:
        student = ScriptedBackend.cycling([" Okay, so let me see what is asked here", " Hmm, wait"], ["42."])
        teacher = ScriptedBackend.cycling([" 17 + 25 = 42 since 7 + 5 = 12 carries one. Now", " check it.</think>"])
        sp, tp = load(checkpoint, max_batch=max_batch, max_wait_ms=5), load(checkpoint, max_batch=max_batch)
        eng = Engine(
            Role("teacher", teacher, get_format("qwen3"), tp, chunk_tokens=6),
            Role("student", student, get_format("qwen3"), sp, chunk_tokens=6),
            limits=Limits(max_total_tokens=160, max_thinking_tokens=120, repetition=None),
        )
        return eng, sp, tp

    async def run(max_batch: int) -> tuple[dict[str, Any], ClassifierPredictor]:
        eng, sp, tp = engine(max_batch)
        samples = [Sample.from_prompt(f"q{i}", f"problem {i}") for i in range(12)]
        results = {r.sample.id: r async for r in eng.run(samples)}
        await sp.aclose()
        await tp.aclose()
        assert all(r.ok for r in results.values()), [r.failure for r in results.values()]
        return {k: (r.response, [s.to_json() for s in r.spans]) for k, r in results.items()}, tp

    batched, tp = await run(16)
    single, _ = await run(1)
    assert batched == single  # batching changes how, not what
    stats = tp.batch_stats
    assert stats["batches"] < stats["items"] and stats["max_batch"] > 1


async def test_the_classifier_serves_the_streaming_engine(checkpoint: Path):
    student = ScriptedBackend.cycling([" Okay, so let me see what is asked here", " Hmm, wait"], ["42."])
    teacher = ScriptedBackend.cycling([" 17 + 25 = 42 since 7 + 5 = 12 carries one. Now", " check it.</think>"])
    sp, tp = load(checkpoint), load(checkpoint)
    eng = Engine(
        Role("teacher", teacher, get_format("qwen3"), tp, chunk_tokens=6),
        Role("student", student, get_format("qwen3"), sp, chunk_tokens=6),
        limits=Limits(max_total_tokens=160, max_thinking_tokens=120, repetition=None),
        streaming=True,
    )
    results = [r async for r in eng.run([Sample.from_prompt(f"q{i}", "p") for i in range(6)])]
    assert all(r.ok for r in results), [r.failure for r in results]
    assert sum(r.stats.switches for r in results) > 0
    assert tp.stats.queries > 0 and sp.stats.reused > 0
    await sp.aclose()
    await tp.aclose()


async def test_queries_are_checked(checkpoint: Path):
    pred = load(checkpoint)
    assert await pred.find_cut(CutQuery("teacher", TextView.of("x"), [])) is None
    with pytest.raises(BoundaryError):
        await pred.find_cut(CutQuery("teacher", TextView.of("x"), ["", ""]))
    await pred.aclose()


async def test_states_are_bounded_and_can_be_forgotten(checkpoint: Path):
    pred = load(checkpoint, max_states=2)
    for sample in ("a", "b", "c"):
        await walk(pred, sample, rounds=2)
    assert list(pred._states) == [("b", "teacher"), ("c", "teacher")]
    pred.forget("c")
    assert list(pred._states) == [("b", "teacher")]
    await pred.aclose()


async def test_a_released_sample_holds_no_window(checkpoint: Path):
    pred = load(checkpoint)
    await pred.release("a")  # unknown: a no-op
    for sample in ("a", "b"):
        await walk(pred, sample, rounds=2)
    assert pred.held == [("a", "teacher"), ("b", "teacher")]
    await pred.release("a")
    assert pred.held == [("b", "teacher")]
    await pred.aclose()


class NonCausal:
    """A bidirectional stand-in that says "the token after a two-letter word is style"; it must
    never be given a cache."""

    causal = False

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, bool]]] = []

    def tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        import re

        spans = [m.span() for m in re.finditer(r"\s*\S+", text)]
        return [len(text[a:b].strip()) for a, b in spans], spans

    def forward(self, items: Any, want_past: bool) -> list[tuple[list[float], None]]:
        assert not want_past
        self.calls.append([(len(ids), past is None) for ids, past in items])
        return [([1.0 if n == 2 else 0.0 for n in ids], None) for ids, _ in items]

    def crop(self, past: Any, n: int) -> Any:
        raise AssertionError("a non-causal model's cache is never reused")


async def test_a_non_causal_backbone_re_encodes_its_window_every_time():
    model = NonCausal()
    pred = ClassifierPredictor(model, window=50)
    assert not pred.reuse
    q1 = CutQuery("teacher", TextView.of("we know x is"), [" 4", " so", " it"], sample_id="s")
    # After " so" (two letters) comes style: the teacher's chunk is cut after " so".
    assert await pred.find_cut(q1) == 1
    q2 = CutQuery("teacher", TextView.of("we know x is 4"), [" so", " y"], sample_id="s")
    await pred.find_cut(q2)
    assert all(fresh for call in model.calls for _, fresh in call)
    assert model.calls[1][0][0] == 7  # the whole window again: "we know x is 4 so y"
    await pred.aclose()


# -- config ------------------------------------------------------------------------------


def test_the_classifier_config_and_build_predictor(checkpoint: Path, tmp_path: Path):
    cfg = ClassifierPredictorConfig(type="classifier", path=checkpoint, device="cpu", threshold=0.7, window=64)
    pred = build_predictor(cfg)
    assert isinstance(pred, ClassifierPredictor)
    assert pred.threshold == 0.7 and pred.window == 64
    asyncio.run(pred.aclose())
    with pytest.raises(ConfigError, match="not a folder"):
        build_predictor(ClassifierPredictorConfig(type="classifier", path=tmp_path / "nowhere"))


def test_a_run_config_takes_a_classifier_predictor_and_hashes_its_content(checkpoint: Path, tmp_path: Path):
    import shutil

    offline = Path(__file__).resolve().parents[1] / "examples" / "offline.yaml"
    over = [f"teacher.predictor={{type: classifier, path: {checkpoint}, max_batch: 8}}"]
    config = load_config(offline, over)
    assert isinstance(config.teacher.predictor, ClassifierPredictorConfig)
    assert config.teacher.predictor.max_batch == 8 and config.student.predictor.type == "lexicon"
    # The same checkpoint elsewhere hashes the same; batching settings do not count; a changed one does.
    moved = shutil.copytree(checkpoint, tmp_path / "moved")
    assert (
        load_config(offline, [f"teacher.predictor={{type: classifier, path: {moved}}}"]).config_hash()
        == config.config_hash()
    )
    (moved / "tessy_predictor.json").write_text("{}")
    assert (
        load_config(offline, [f"teacher.predictor={{type: classifier, path: {moved}}}"]).config_hash()
        != config.config_hash()
    )
    with pytest.raises(ConfigError, match=r"teacher\.predictor\.windw"):
        load_config(offline, [f"teacher.predictor={{type: classifier, path: {checkpoint}, windw: 3}}"])
    with pytest.raises(ConfigError, match="threshold"):
        load_config(offline, [f"teacher.predictor={{type: classifier, path: {checkpoint}, threshold: 1.5}}"])
