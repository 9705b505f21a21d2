"""Windows, token types from annotated spans, and next-token label alignment."""

from __future__ import annotations

import pytest

from tessy.boundary import TokenType
from tessy.errors import DataError
from tessy.predictor.labels import (
    IGNORE,
    AnnotatedWindow,
    cut_windows,
    first_labelled,
    next_token_labels,
    token_types,
)

S, C = TokenType.STYLE, TokenType.CAPABILITY


def offsets_of(pieces: list[str]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for p in pieces:
        out.append((pos, pos + len(p)))
        pos += len(p)
    return out


def span_of(text: str, phrase: str, start: int = 0) -> tuple[int, int]:
    at = text.index(phrase, start)
    return at, at + len(phrase)


# -- windows -----------------------------------------------------------------------------


def test_windows_cut_on_whitespace_with_offsets_into_the_trace():
    words = [f"w{i}" for i in range(130)]
    text = "  " + " ".join(words) + "\n"
    windows = cut_windows(text, words=60)
    assert [len(w.text.split()) for w in windows] == [60, 60, 10]
    for w in windows:
        assert text[w.start : w.end] == w.text
        assert not w.text[0].isspace() and not w.text[-1].isspace()
    assert [w.index for w in windows] == [0, 1, 2]
    assert cut_windows("   ", 60) == []
    with pytest.raises(ValueError):
        cut_windows("a b", 0)


# -- token types -------------------------------------------------------------------------


def test_a_token_is_style_when_most_of_its_letters_lie_in_a_span():
    pieces = ["Okay", ",", " so", " I", " need"]
    text = "".join(pieces)
    types = token_types(text, offsets_of(pieces), [span_of(text, "Okay, so")])
    assert types == [S, S, S, C, C]


def test_sub_word_tokens_follow_the_majority_of_their_letters():
    # "Alright" split in two: both halves are inside the span.
    pieces = ["Al", "right", ",", " com", "pute", " it"]
    text = "".join(pieces)
    assert token_types(text, offsets_of(pieces), [span_of(text, "Alright,")]) == [S, S, S, C, C, C]
    # A span that covers only part of a token: the token goes with the majority of its letters.
    pieces = [" Let", " mess", "age"]
    text = "".join(pieces)
    assert token_types(text, offsets_of(pieces), [(0, 6)]) == [S, C, C]  # " mess": 1 of its 4 letters
    assert token_types(text, offsets_of(pieces), [(0, 7)]) == [S, C, C]  # 2 of 4: half is not a majority
    assert token_types(text, offsets_of(pieces), [(0, 8)]) == [S, S, C]  # 3 of 4


def test_punctuation_and_whitespace_take_the_type_of_the_token_before():
    pieces = ["Hmm", ".", "\n\n", "x", " =", " 4", "."]
    text = "".join(pieces)
    # The judge left the "." out of the span: it still goes with "Hmm".
    assert token_types(text, offsets_of(pieces), [span_of(text, "Hmm")]) == [S, S, S, C, C, C, C]
    # A text that opens with punctuation starts as capability.
    assert token_types("(x", [(0, 1), (1, 2)], []) == [C, C]


def test_spans_at_the_edges_of_the_text():
    pieces = ["So", " x", " is", " 4", " now"]
    text = "".join(pieces)
    spans = [span_of(text, "So"), span_of(text, "now")]
    assert token_types(text, offsets_of(pieces), spans) == [S, C, C, C, S]
    # Spans past the text's end are clipped, not an error.
    assert token_types("ab", [(0, 2)], [(0, 50)]) == [S]


# -- next-token labels -------------------------------------------------------------------


def test_labels_are_the_next_tokens_types_and_the_last_position_is_ignored():
    types = [S, S, C, C, S]
    assert next_token_labels(types, first=0) == [1, 0, 0, 1, IGNORE]


def test_only_positions_whose_next_token_is_in_the_window_are_labelled():
    # Tokens 0-2 are context, 3.. the window: position 2 predicts token 3, the window's first.
    types = [C, C, C, S, C, C]
    assert next_token_labels(types, first=3) == [IGNORE, IGNORE, 1, 0, 0, IGNORE]
    # Nothing labelled when the window has no tokens.
    assert next_token_labels(types, first=6) == [IGNORE] * 6


def test_the_first_window_token_is_found_by_its_first_non_space_character():
    text = "ctx ends. Okay so"
    pieces = ["ctx", " ends", ".", " Okay", " so"]
    window_start = text.index("Okay")
    # " Okay" begins with the space before the window, but its letters are in the window.
    assert first_labelled(text, offsets_of(pieces), window_start) == 3


def test_a_style_span_on_the_windows_first_word_labels_the_last_context_position():
    window = AnnotatedWindow("t", "student", 1, "and 4 is even.", " Wait, then x", ((1, 6),))
    assert window.window_text[1:6] == "Wait,"
    text = window.text
    pieces = ["and", " 4", " is", " even", ".", " Wait", ",", " then", " x"]
    assert "".join(pieces) == text
    offsets = offsets_of(pieces)
    types = token_types(text, offsets, window.text_spans())
    labels = next_token_labels(types, first_labelled(text, offsets, window.offset))
    #             and     4       is      even    .   Wait  ,  then  x
    assert labels == [IGNORE, IGNORE, IGNORE, IGNORE, 1, 1, 0, 0, IGNORE]


def test_annotated_window_records_are_checked():
    good = {
        "trace_id": "a",
        "role": "teacher",
        "window_index": 2,
        "context": "x ",
        "window_text": "So y",
        "spans": [[0, 2]],
    }
    w = AnnotatedWindow.from_record(good)
    assert w.text == "x So y" and w.offset == 2 and w.text_spans() == [(2, 4)]
    with pytest.raises(DataError, match="outside"):
        AnnotatedWindow.from_record({**good, "spans": [[0, 9]]})
    with pytest.raises(DataError):
        AnnotatedWindow.from_record({"trace_id": "a"})


def test_labels_with_a_real_sub_word_tokenizer():
    pytest.importorskip("transformers")
    from tessy.predictor.train import encode
    from tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    context = "We add 17 and 25 here. "
    window_text = "Hmm, unbelievably the total is 42. Let me recheck"
    spans = ((0, 4), (35, 41))
    assert window_text[35:41] == "Let me"
    w = AnnotatedWindow("t", "teacher", 0, context, window_text, spans)
    ex = encode(w, tok, max_length=200)
    assert ex is not None
    enc = tok(w.text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    assert len(ex.ids) == len(offsets)
    words = [w.text[a:b] for a, b in offsets]
    assert len(words) > len(w.text.split())  # the tokenizer does split words into pieces
    # Every label is the gold type of the next token; context positions before the one
    # preceding the window are ignored, and so is the last position.
    types = token_types(w.text, offsets, w.text_spans())
    first = first_labelled(w.text, offsets, w.offset)
    for j, label in enumerate(ex.labels):
        if j < first - 1 or j == len(offsets) - 1:
            assert label == IGNORE
        else:
            assert label == int(types[j + 1]), (j, words[j], words[j + 1])
    # "Hmm" opens the window: the position before it (the context's last token) says style.
    assert ex.labels[first - 1] == 1
    # Left truncation keeps the window's end.
    short = encode(w, tok, max_length=5)
    assert short is not None and short.ids == ex.ids[-5:] and short.labels[-1] == IGNORE
