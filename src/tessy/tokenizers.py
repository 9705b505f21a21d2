"""The tokenizer interface tessy needs, a tiny deterministic tokenizer for tests and fakes, and
a wrapper that gives a Hugging Face tokenizer the same interface.

Pieces are the contract the engine relies on: one piece per token, and the pieces of a text
concatenate to exactly that text. Byte-level tokenizers split some characters (emoji, CJK) over
several tokens; the piece of each such token holds the characters its bytes *complete*, so the
tokens before the last one of a split character have empty pieces.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .records import Message

__all__ = [
    "FakeTokenizer",
    "HFTokenizer",
    "PieceDecoder",
    "TemplateTokenizer",
    "Tokenizer",
    "load_tokenizer",
]

logger = logging.getLogger(__name__)

#: Replacement character: what a decoder yields for bytes that are not (yet) a whole character.
_REPLACEMENT = "\ufffd"


@runtime_checkable
class Tokenizer(Protocol):
    """What tessy asks of a tokenizer: lossless pieces, and ids where a backend wants them."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def pieces(self, text: str) -> list[str]:
        """Split ``text`` into token strings whose concatenation is exactly ``text``."""
        ...

    def encode_pieces(self, text: str, *, first: bool = False) -> tuple[list[int], list[str]]:
        """The ids of ``text`` and one piece per id, concatenating to ``text``.

        Special-token text (``<|im_start|>``) is parsed into its id. ``first`` says the text
        starts a sequence: a tokenizer that puts a BOS token before every sequence adds it then
        (unless the text already begins with it), with an empty piece.
        """
        ...


@runtime_checkable
class TemplateTokenizer(Protocol):
    """A tokenizer that carries its model's chat template (for formats rendered through it)."""

    @property
    def chat_template(self) -> str | None: ...

    def apply_chat_template(self, messages: Sequence[Message], **kwargs: Any) -> str:
        """The conversation rendered by the template, with the assistant's turn opened."""
        ...


# Special tags (`</think>`, `<|im_end|>`), then a word with an optional leading space and an
# optional leading punctuation mark (` so`, `-check`), then a lone punctuation mark with an
# optional leading space, then a run of whitespace. Every character matches one of these,
# so the pieces always concatenate back to the input.
_FAKE_TOKEN = re.compile(r"</?[A-Za-z_|][^<>\s]*>|[ ]?[^\w\s]?\w+|[ ]?[^\w\s]|\s+")


class FakeTokenizer:
    """A word-level tokenizer with a vocabulary that grows as it sees new pieces.

    ``"Okay, so I need"`` becomes ``["Okay", ",", " so", " I", " need"]``. Ids are assigned
    in order of first appearance, so they are stable within one instance (two instances are
    two different vocabularies, like two models' tokenizers).
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []

    def pieces(self, text: str) -> list[str]:
        return _FAKE_TOKEN.findall(text)

    def encode(self, text: str) -> list[int]:
        return self.ids_of(self.pieces(text))

    def encode_pieces(self, text: str, *, first: bool = False) -> tuple[list[int], list[str]]:
        pieces = self.pieces(text)
        return self.ids_of(pieces), pieces

    def decode(self, ids: list[int]) -> str:
        return "".join(self._pieces[i] for i in ids)

    def ids_of(self, pieces: Sequence[str]) -> list[int]:
        """The id of each piece (new pieces join the vocabulary)."""
        return [self._id(p) for p in pieces]

    def _id(self, piece: str) -> int:
        found = self._ids.get(piece)
        if found is None:
            found = self._ids[piece] = len(self._pieces)
            self._pieces.append(piece)
        return found


class PieceDecoder:
    """Turns generated token ids into pieces, one per token, as they come.

    Each new token's piece is the text that decoding it adds; text that ends in an unfinished
    character (a byte-level token holding part of an emoji) is held back and given to the token
    that completes it. A few ids of context before the first new token keep tokenizers that
    treat a sequence's first token specially (SentencePiece's leading space) exact.
    """

    _CONTEXT = 4

    def __init__(self, tokenizer: HFTokenizer, context: Sequence[int] = ()) -> None:
        self._decode = tokenizer.decode
        self._ids: list[int] = list(context[-self._CONTEXT :]) if context else []
        self._prefix = 0  # the window decoded for the already emitted text starts here ...
        self._read = len(self._ids)  # ... and ends here

    def add(self, token_id: int) -> str:
        """The piece of one more token (empty while its character is unfinished)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(_REPLACEMENT):
            piece = after[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)
            if self._prefix > 64:  # keep the window short
                del self._ids[: self._prefix - self._CONTEXT]
                shift = self._prefix - self._CONTEXT
                self._prefix -= shift
                self._read -= shift
            return piece
        return ""

    @property
    def holding(self) -> bool:
        """Whether some tokens' text is held back (an unfinished character)."""
        return self._read < len(self._ids)

    def flush(self) -> str:
        """The held-back text as it decodes now (with a replacement character for loose bytes)."""
        if not self.holding:
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]


class HFTokenizer:
    """A Hugging Face tokenizer behind tessy's :class:`Tokenizer` interface.

    Encoding parses special-token text and adds no special tokens, except the BOS token of
    tokenizers that put one before every sequence, and only for a sequence's first text
    (``encode_pieces(text, first=True)``). Decoding keeps special tokens as text.
    """

    def __init__(self, hf: Any, name: str = "") -> None:
        self.hf = hf
        self.name = name or str(getattr(hf, "name_or_path", "") or type(hf).__name__)
        bos = getattr(hf, "bos_token_id", None)
        self.bos_token_id: int | None = bos if isinstance(bos, int) else None
        self.adds_bos = bool(getattr(hf, "add_bos_token", False)) and self.bos_token_id is not None
        self._fast = bool(getattr(hf, "is_fast", True))

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r})"

    @property
    def chat_template(self) -> str | None:
        template = getattr(self.hf, "chat_template", None)
        return template if isinstance(template, str) else None

    @property
    def eos_token_ids(self) -> set[int]:
        eos = getattr(self.hf, "eos_token_id", None)
        return {eos} if isinstance(eos, int) else set()

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def pieces(self, text: str) -> list[str]:
        return self.encode_pieces(text)[1]

    def encode_pieces(self, text: str, *, first: bool = False) -> tuple[list[int], list[str]]:
        if not text:
            ids: list[int] = []
            pieces: list[str] = []
        elif self._fast:
            enc = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            pieces = _pieces_from_offsets(text, enc["offset_mapping"])
        else:  # a slow (Python) tokenizer has no offsets: decode the ids instead
            ids = self.encode(text)
            pieces = self.pieces_of_ids(ids)
            if "".join(pieces) != text:
                pieces = [""] * (len(ids) - 1) + [text] if ids else []
        if first and self.adds_bos and ids[:1] != [self.bos_token_id]:
            assert self.bos_token_id is not None
            ids.insert(0, self.bos_token_id)
            pieces.insert(0, "")
        return ids, pieces

    def pieces_of_ids(self, ids: Sequence[int], context: Sequence[int] = ()) -> list[str]:
        """One piece per id (see :class:`PieceDecoder`); loose bytes at the end are decoded as they are."""
        decoder = self.piece_decoder(context)
        pieces = [decoder.add(i) for i in ids]
        if pieces and decoder.holding:
            pieces[-1] += decoder.flush()
        return pieces

    def piece_decoder(self, context: Sequence[int] = ()) -> PieceDecoder:
        return PieceDecoder(self, context)

    def apply_chat_template(self, messages: Sequence[Message], **kwargs: Any) -> str:
        kwargs.setdefault("add_generation_prompt", True)
        return str(self.hf.apply_chat_template(list(messages), tokenize=False, **kwargs))


def _pieces_from_offsets(text: str, offsets: Sequence[tuple[int, int]]) -> list[str]:
    """Slices of ``text``, one per token, that always concatenate to ``text``.

    A token's slice ends where its offsets end, but never goes back, and stops where the next
    token starts when the two overlap (they share a character split into bytes: the character
    goes to the token that completes it). The last slice runs to the end of the text.
    """
    pieces: list[str] = []
    pos = 0
    last = len(offsets) - 1
    for i, (_, end) in enumerate(offsets):
        if i == last:
            stop = len(text)
        else:
            stop = end
            next_start = offsets[i + 1][0]
            if next_start < end:
                stop = next_start
            stop = min(max(pos, stop), len(text))
        pieces.append(text[pos:stop])
        pos = stop
    return pieces


def load_tokenizer(spec: str | Path) -> HFTokenizer:
    """A Hugging Face tokenizer from a folder, a GGUF file or a catalogued model name.

    A GGUF file's tokenizer is converted once and kept in tessy's cache (see :mod:`tessy.hf`).
    """
    from . import hf

    return HFTokenizer(hf.load_hf_tokenizer(spec), name=str(spec))
