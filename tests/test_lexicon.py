from __future__ import annotations

import asyncio

import pytest

from conftest import toks
from tessy import ConfigError
from tessy.boundary import CutQuery, LexiconPredictor, TokenType, first_switch
from tessy.boundary.lexicon import DEFAULT_PHRASES
from tessy.text import TextView

S, C = TokenType.STYLE, TokenType.CAPABILITY


def types(pred: LexiconPredictor, chunk: str, context: str = "") -> list[TokenType]:
    return pred.token_types(TextView.of(context), toks(chunk))


def cut(pred: LexiconPredictor, role: str, chunk: str, context: str = "") -> int | None:
    return asyncio.run(pred.find_cut(CutQuery(role, TextView.of(context), toks(chunk))))  # type: ignore[arg-type]


@pytest.fixture
def lex() -> LexiconPredictor:
    return LexiconPredictor()


def test_default_list_holds_the_documented_phrases():
    for phrase in (
        "okay",
        "so",
        "well",
        "hmm",
        "wait",
        "let me",
        "let's see",
        "i think",
        "but",
        "now",
        "then",
        "first",
        "alternatively",
        "for example",
        "in this case",
        "but if",
    ):
        assert phrase in DEFAULT_PHRASES


def test_style_phrases_match_case_insensitively_on_word_boundaries(lex):
    assert types(lex, "OKAY|,| So| we") == [S, S, S, C]
    # "so" inside "also"/"sofa", "now" inside "known" are not phrases ("also" is one itself).
    assert types(lex, " sofa| known| nowhere") == [C, C, C]
    assert types(lex, " Wait|!| Hmm|.") == [S, S, S, S]


def test_punctuation_and_whitespace_take_the_type_before_them(lex):
    assert types(lex, " 42|.|\n\n| Now| verify") == [C, C, C, S, C]
    assert types(lex, "Okay|,|\n| x") == [S, S, S, C]


def test_multi_word_phrases_span_tokens_and_the_context_edge(lex):
    assert types(lex, " Let|'s| see|,| x") == [S, S, S, S, C]
    # "let" ends the context, " me" opens the chunk: the phrase is found across the edge.
    assert types(lex, " me| check", context="and so let") == [S, S]
    assert types(lex, " x| =| 5", context="we let") == [C, C, C]
    # A curly apostrophe counts as well.
    assert types(lex, " Let’s| see") == [S, S]


def test_the_first_token_takes_the_context_type_when_it_has_no_letters(lex):
    assert types(lex, ",| then| x", context="Okay") == [S, S, C]
    assert types(lex, ",| x", context="17 + 25") == [C, C]


def test_next_token_types_shift_by_one(lex):
    chunk = toks("Okay|,| so| I")
    nxt = lex.next_token_types(TextView.of(""), chunk)
    assert nxt == [S, S, C, None]  # the token after the chunk is unknown


def test_cuts_follow_the_design(lex):
    # Worked example steps 1-4 with the default list.
    assert cut(lex, "student", "Okay|,| so| I| need| to| add| 17") == 2
    assert cut(lex, "teacher", " 17| +| 25| =| 42|.| Now| verify") == 5
    assert cut(lex, "teacher", " double|-check|:| 42| -| 25| =| 17", context="Let me") is None
    # A student chunk of pure style text has no cut; nor does a teacher chunk of pure capability.
    assert cut(lex, "student", "Hmm|,| wait|,| so") is None


def test_first_switch_respects_the_last_allowed_position():
    assert first_switch("student", [S, S, C], last=2) == 2
    assert first_switch("student", [S, S, C], last=1) is None
    assert first_switch("teacher", [C, None, S], last=2) == 2


def test_phrases_extend_from_a_file_or_replace_the_defaults(tmp_path):
    f = tmp_path / "phrases.txt"
    f.write_text("# my model's tics\nto be sure  # trailing comment\n\nVery well\n")
    pred = LexiconPredictor(phrases_file=f)
    assert "to be sure" in pred.phrases and "very well" in pred.phrases and "okay" in pred.phrases
    assert types(pred, " To| be| sure|,| x") == [S, S, S, S, C]
    only = LexiconPredictor(["indeed"], replace_defaults=True)
    assert only.phrases == ("indeed",)
    assert types(only, "Okay| indeed") == [C, S]


def test_a_predictor_without_phrases_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no phrases"):
        LexiconPredictor([], replace_defaults=True)
    with pytest.raises(ConfigError, match="cannot read"):
        LexiconPredictor(phrases_file=tmp_path / "missing.txt")


def test_lookahead_covers_the_longest_phrase():
    assert LexiconPredictor(["on the other hand"], replace_defaults=True).lookahead == 5


def test_a_given_lookahead_replaces_the_lexicons_own_and_its_phrase_tracking():
    fixed = LexiconPredictor(lookahead=2)
    assert fixed.lookahead == 2
    # All pieces but the last two, though "let" may still become "let me".
    assert fixed.settled(TextView.of("Now "), toks(" we| let| x| y")) == 2
    assert LexiconPredictor(lookahead=0).settled(TextView.of("Now "), toks(" we| let")) == 2
    with pytest.raises(ConfigError, match="lookahead"):
        LexiconPredictor(lookahead=-1)


def test_build_predictor_passes_the_configured_lookahead():
    from tessy.build import build_predictor
    from tessy.config import LexiconPredictorConfig

    assert build_predictor(LexiconPredictorConfig(lookahead=3)).lookahead == 3
    assert build_predictor(LexiconPredictorConfig()).lookahead == LexiconPredictor().lookahead


def test_context_is_read_only_at_its_tail(lex):
    asked: list[int] = []

    class Spy(TextView):
        def tail(self, n_chars: int) -> str:
            asked.append(n_chars)
            return super().tail(n_chars)

        @property
        def text(self) -> str:  # the whole text must never be needed
            raise AssertionError("the predictor read the whole context")

    base = TextView.of("word " * 10_000)
    spy = Spy(base._buffer, base._n_parts, len(base))
    lex.token_types(spy, toks(" so| x"))
    assert asked and max(asked) <= lex.context_chars


@pytest.mark.parametrize(
    ("chunk", "settled"),
    [
        (" we| let", 1),  # "let" may become "let me"
        (" we| let| x", 3),  # "let x" is no phrase: all settled
        (" and| so", 1),  # "so" may go on ("sofa")
        (" and| so|,", 3),
        (" x| hold| o", 1),  # "hold o" may become "hold on"
        (" x| =| 4", 3),
    ],
)
def test_settled_pieces_are_those_no_phrase_under_way_can_change(lex, chunk, settled):
    assert lex.settled(TextView.of("Now "), toks(chunk)) == settled


def test_settled_sees_a_phrase_begun_in_the_context(lex):
    assert lex.settled(TextView.of("and then let"), toks(" m")) == 0
    # "let me see" may still go on ("let me seen": then "see" is not style): nothing settled yet.
    assert lex.settled(TextView.of("and then let"), toks(" me| see")) == 0
    assert lex.settled(TextView.of("and then let"), toks(" me| see|,| x")) == 4


def _settled_by_scanning_every_phrase(lex: LexiconPredictor, context: TextView, pieces: list[str]) -> int:
    """``settled`` as first written: every word start against every phrase."""
    import re

    from tessy.boundary.lexicon import _norm

    text = context.tail(lex._longest) + "".join(pieces)
    frontier = len(text)
    for m in re.finditer(r"(?<!\w)\w", text):
        rest = _norm(text[m.start() :])
        if any(p.startswith(rest) and (len(p) > len(rest) or text[-1:].isalnum()) for p in lex.phrases):
            frontier = m.start()
            break
    cut, n, pos = frontier - (len(text) - len("".join(pieces))), 0, 0
    for piece in pieces:
        pos += len(piece)
        if pos > cut:
            break
        n += 1
    return n


def test_settled_agrees_with_a_scan_of_every_phrase_on_random_text() -> None:
    import random

    rng = random.Random(7)
    words = ["let", "me", "see", "so", "sofa", "Okay", "x", "=", "2,", "on", "the", "other", "hand", "but", "if", "\n"]
    lex = LexiconPredictor(phrases=["it's  fine"])
    for _ in range(2000):
        text = [rng.choice(words) + rng.choice(["", " ", "  ", "\n"]) for _ in range(rng.randint(1, 12))]
        split = rng.randint(0, len(text))
        context, pieces = TextView.of("".join(text[:split])), text[split:]
        assert lex.settled(context, pieces) == _settled_by_scanning_every_phrase(lex, context, pieces)
