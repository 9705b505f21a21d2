"""The ``lexicon`` boundary predictor: style phrases from a list, no weights.

A token is *style* when its letters fall inside a style phrase matched in the text
(case-insensitively, on word boundaries), and *capability* otherwise. Tokens with no letters or
digits (punctuation, whitespace) take the type of the token before them, so ``"Okay,"`` is
style throughout and the ``"."`` that ends a formula stays with the formula.

Like a trained predictor, it labels each position with the type of the *next* token, so the
engine's cut rule is the same for both. The default phrases are openers, connectives,
hesitations and transitions that reasoning models use to steer themselves: see
:data:`DEFAULT_PHRASES`. Extend them with ``phrases`` or a ``phrases_file`` (one phrase a
line, ``#`` starts a comment), or replace them with ``replace_defaults``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import ConfigError
from ..text import TextView
from .base import NextTokenTypePredictor, TokenType

__all__ = ["DEFAULT_PHRASES", "LexiconPredictor", "read_phrases"]

#: The default style phrases, grouped by what they do in a reasoning trace.
DEFAULT_PHRASES: tuple[str, ...] = (
    # openers and acknowledgements
    "okay",
    "ok",
    "alright",
    "all right",
    "well",
    "oh",
    "right",
    # hesitations and self-checks
    "hmm",
    "hmmm",
    "wait",
    "hold on",
    "actually",
    "i think",
    "i guess",
    "maybe",
    # steering the next step
    "so",
    "let me",
    "let me see",
    "let me think",
    "let me check",
    "let's",
    "let's see",
    "now",
    "then",
    "first",
    "next",
    "also",
    # connectives and transitions
    "but",
    "but if",
    "alternatively",
    "for example",
    "in this case",
    "on the other hand",
)

_CONTEXT_CHARS = 96
_SPACE = re.compile(r"\s")
_ALNUM = re.compile(r"[^\W_]")
_WORD_START = re.compile(r"(?<!\w)\w")
_LAST_ALNUM = re.compile(r"[^\W_](?=[\W_]*\Z)")
#: Whitespace that normalizing changes: runs of it, and any but a plain space.
_ODD_SPACE = re.compile(r"\s\s|[^\S ]")


def read_phrases(path: Path) -> list[str]:
    """Phrases from a file: one a line, blank lines and ``#`` comments ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the phrases file {path}: {exc}") from exc
    phrases = [line.split("#", 1)[0].strip() for line in lines]
    return [p for p in phrases if p]


def _norm(text: str) -> str:
    """Text as phrases are written: lower case, single spaces, straight apostrophes."""
    return re.sub(r"\s+", " ", text.lower().replace("’", "'"))


def _phrase_pattern(phrase: str) -> str:
    words = phrase.lower().split()
    # Any whitespace between words; straight and curly apostrophes alike.
    return r"\s+".join(re.escape(w).replace("'", "['’]") for w in words)


class LexiconPredictor(NextTokenTypePredictor):
    """Finds switches at style phrases from a word list."""

    def __init__(
        self,
        phrases: Iterable[str] | None = None,
        *,
        phrases_file: Path | None = None,
        replace_defaults: bool = False,
        lookahead: int | None = None,
    ) -> None:
        if lookahead is not None and lookahead < 0:
            raise ConfigError(f"the lexicon's lookahead must be 0 or more, not {lookahead}")
        chosen: list[str] = [] if replace_defaults else list(DEFAULT_PHRASES)
        chosen.extend(phrases or ())
        if phrases_file is not None:
            chosen.extend(read_phrases(phrases_file))
        cleaned = sorted({" ".join(p.lower().split()) for p in chosen if p.strip()}, key=len, reverse=True)
        if not cleaned:
            raise ConfigError("the lexicon predictor has no phrases: give 'phrases' or a 'phrases_file'")
        self.phrases: tuple[str, ...] = tuple(cleaned)
        # Longest first, so "but if" wins over "but" and "let me see" over "let me".
        alternatives = "|".join(_phrase_pattern(p) for p in self.phrases)
        # A match starts with a phrase's first character: a class test at each position turns
        # most of them away before the alternatives are tried (the same matches, sooner).
        firsts = {p[0] for p in self.phrases} | ({"’"} if any(p[0] == "'" for p in self.phrases) else set())
        starts = "".join(re.escape(c) for c in sorted(firsts))
        self._pattern = re.compile(rf"(?<!\w)(?=[{starts}])(?:{alternatives})(?!\w)", re.IGNORECASE)
        # Enough tokens to see a whole phrase after the next token (tokens are at most words).
        # A given lookahead (a sensitivity knob of `tessy bench`) replaces this and the phrase
        # tracking of `settled` with the plain rule: all pieces but the last `lookahead`.
        self._fixed_lookahead = lookahead is not None
        self.lookahead = max(len(p.split()) for p in self.phrases) + 1 if lookahead is None else lookahead
        self.context_chars = _CONTEXT_CHARS
        self._longest = max(len(p) for p in self.phrases) + 1
        # `settled` asks, per word start, whether the text from there starts a phrase: a set
        # lookup instead of a scan of every phrase. Proper prefixes may still grow into a phrase;
        # a whole phrase only while its last word may go on.
        self._open_prefixes = frozenset(p[:i] for p in self.phrases for i in range(1, len(p)))
        self._phrase_set = frozenset(self.phrases)
        # A phrase's prefix has no more whitespace-separated words than the phrase.
        self._most_words = max(len(p.split()) for p in self.phrases)

    def settled(self, context: TextView, pieces: Sequence[str]) -> int:
        """Pieces before the first place where a phrase may still be under way.

        A phrase may be under way where a word starts and the text from there (lower case, single
        spaces) is the start of a phrase: ``let`` or ``let m`` (``let me``), or ``so`` at the very
        end (the word may go on: ``sofa``). Types before that place cannot change any more.
        With a ``lookahead`` given to the constructor, the base rule instead.
        """
        if self._fixed_lookahead:
            return super().settled(context, pieces)
        if not pieces:
            return 0
        chunk = "".join(pieces)
        text = context.tail(self._longest) + chunk
        frontier = len(text)
        # Word starts before the last `_most_words` words leave more words than any phrase has.
        fields = text.rsplit(None, self._most_words)
        first = len(fields[0]) if len(fields) > self._most_words else 0
        ends_in_word = text[-1:].isalnum()
        prefixes, whole = self._open_prefixes, self._phrase_set
        lowest = max(first, len(text) - 4 * self._longest)
        # Where the text from there on has single spaces only and lower case changes no length
        # (nor depends on context, as a final sigma does), it is normalized once, not once per
        # word start.
        region = text[lowest:]
        low = region.lower().replace("’", "'")
        plain = len(low) == len(region) and "Σ" not in region and _ODD_SPACE.search(region) is None
        normed = low if plain else None
        for m in _WORD_START.finditer(text, lowest):
            rest = normed[m.start() - lowest :] if normed is not None else _norm(text[m.start() :])
            if rest in prefixes or (ends_in_word and rest in whole):
                frontier = m.start()
                break
        cut = frontier - (len(text) - len(chunk))  # in chunk coordinates
        n = 0
        pos = 0
        for piece in pieces:
            pos += len(piece)
            if pos > cut:
                break
            n += 1
        return n

    def phrase_spans(self, text: str) -> list[tuple[int, int]]:
        """The character spans of the style phrases found in ``text``, in order."""
        return [m.span() for m in self._pattern.finditer(text)]

    def next_token_types(self, context: TextView, pieces: Sequence[str]) -> list[TokenType | None]:
        types = self.token_types(context, pieces)
        return [*types[1:], None]

    def token_types(self, context: TextView, pieces: Sequence[str]) -> list[TokenType]:
        """The type of each token of the chunk."""
        tail = context.tail(_CONTEXT_CHARS)
        if len(tail) == _CONTEXT_CHARS:
            # Drop a word cut in half by the window, so it cannot match as a whole word.
            space = _SPACE.search(tail)
            tail = tail[space.start() :] if space else ""
        text = tail + "".join(pieces)
        matches = [m.span() for m in self._pattern.finditer(text)]
        n_matches = len(matches)

        # The type before the chunk: that of the last letter or digit of the context.
        prev = TokenType.CAPABILITY
        last = _LAST_ALNUM.search(tail)
        if last is not None:
            i = last.start()
            if any(s <= i < e for s, e in matches):
                prev = TokenType.STYLE

        types: list[TokenType] = []
        pos = len(tail)
        m = 0  # first match that may still overlap the current piece
        for piece in pieces:
            start = pos
            pos += len(piece)
            word = _ALNUM.search(piece)
            if word is not None:
                core = start + word.start()
                while m < n_matches and matches[m][1] <= core:
                    m += 1
                prev = TokenType.STYLE if m < n_matches and matches[m][0] < pos else TokenType.CAPABILITY
            types.append(prev)
        return types
