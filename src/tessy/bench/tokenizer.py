"""The simulated server's tokenizer: word-level pieces with a fixed vocabulary and byte fallback.

Ids are the same in every process (the vocabulary is built from fixed lists), so a prompt sent
as text and the same prompt sent as token ids agree, and ids returned by one server mean the
same to another. Text outside the vocabulary falls back to one token per UTF-8 byte, so any
text round-trips: ``decode(encode(t)) == t``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence

__all__ = ["EOS", "SPECIAL_TOKENS", "THINK_END", "THINK_START", "SimTokenizer"]

EOS = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
#: Chat-format tags of the formats tessy renders; each is one token.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    EOS,
    THINK_START,
    THINK_END,
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
)


def _byte_token(b: int) -> str:
    return f"<0x{b:02X}>"


class SimTokenizer:
    """Splits text into special tags, words with an optional leading space, numbers of up to
    three digits, single punctuation marks, newlines and runs of spaces."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        vocab: list[str] = list(SPECIAL_TOKENS)
        vocab += [_byte_token(b) for b in range(256)]
        base = set(words) | set(_COMMON_WORDS)
        for w in sorted(base):
            for form in dict.fromkeys([w, w.capitalize(), w.upper()] if w.isalpha() else [w]):
                vocab += [form, " " + form]
        vocab += [str(i) for i in range(1000)] + [f" {i}" for i in range(1000)]
        vocab += [c for c in string.punctuation] + [f" {c}" for c in string.punctuation]
        vocab += ["\n", "\t"] + [" " * n for n in range(1, 17)]
        self._pieces: list[str] = list(dict.fromkeys(vocab))
        self._ids: dict[str, int] = {p: i for i, p in enumerate(self._pieces)}
        self._byte_base = len(SPECIAL_TOKENS)
        specials = "|".join(re.escape(s) for s in SPECIAL_TOKENS)
        self._split = re.compile(rf"{specials}|[ ]?[A-Za-z]+|[ ]?\d{{1,3}}|[ ]?[^\w\s]|\n|[ \t]+|\S")
        self.eos_id = self._ids[EOS]
        self.think_start_id = self._ids[THINK_START]
        self.think_end_id = self._ids[THINK_END]
        self.special_ids = frozenset(self._ids[s] for s in SPECIAL_TOKENS)
        #: Tokens left out of text with ``skip_special_tokens``: chat tags, not the thinking tags
        #: (Qwen3's ``<think>`` and ``</think>`` are added tokens that are not special).
        self.skip_ids = self.special_ids - {self.think_start_id, self.think_end_id}

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def pieces(self, text: str) -> list[str]:
        """Token strings whose concatenation is ``text`` (a word outside the vocabulary stays whole)."""
        return self._split.findall(text)

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        ids = self._ids
        for piece in self._split.findall(text):
            found = ids.get(piece)
            if found is not None:
                out.append(found)
            else:
                out.extend(self._byte_base + b for b in piece.encode("utf-8"))
        return out

    def id_of(self, piece: str) -> int:
        """The id of a piece in the vocabulary (``KeyError`` if it is not one)."""
        return self._ids[piece]

    def piece(self, token_id: int) -> str:
        """The text of one token (a byte token's text is its character where it is one)."""
        if self.is_byte(token_id):
            b = token_id - self._byte_base
            return chr(b) if b < 0x80 else "\ufffd"
        return self._pieces[token_id]

    def is_byte(self, token_id: int) -> bool:
        return self._byte_base <= token_id < self._byte_base + 256

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        out: list[str] = []
        pending = bytearray()
        for i in ids:
            if not 0 <= i < len(self._pieces):
                raise ValueError(f"token id {i} is out of range (vocabulary of {len(self._pieces)})")
            if self.is_byte(i):
                pending.append(i - self._byte_base)
                continue
            if pending:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            if skip_special and i in self.skip_ids:
                continue
            out.append(self._pieces[i])
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


#: Everyday words, so that prompts seldom fall back to bytes.
_COMMON_WORDS = (
    "a an and are as at be by can do does for from given has have how i if in into is it its list "
    "many me my no not number of on or our prime problem prove question return reverse show single "
    "solve tell than that the their them there these this to tree two under use using was we what "
    "when where which while who why will with write you your user assistant system function python "
    "integers integer linked place complexity nodes edges working careful tutor sum"
).split()
