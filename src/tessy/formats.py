"""Chat formats: how a role's prompt is rendered with thinking opened, and where thinking ends.

Every role renders the *shared* thinking text inside its own format: its prompt is
``render_think(messages) + shared_thinking``. When thinking is over, the answer is written
after ``answer_suffix`` (which closes thinking), and the stored response is rendered in the
*student's* format by :meth:`Format.render_response`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from .errors import ConfigError, FormatError
from .records import Message

__all__ = [
    "ChatMLThinkFormat",
    "DeepSeekR1Format",
    "Format",
    "Qwen3Format",
    "format_names",
    "get_format",
    "register_format",
]


class Format(ABC):
    """A model's chat format, as far as an interleaved thinking loop needs it."""

    name: str = ""
    #: Stop strings that end the thinking phase when generated.
    think_stop: tuple[str, ...] = ()
    #: Stop strings for the answer phase (besides the model's end-of-sequence token).
    answer_stop: tuple[str, ...] = ()

    def __init__(self, system_prompt: str | None = None) -> None:
        self.system_prompt = system_prompt

    @abstractmethod
    def render_think(self, messages: Sequence[Message]) -> str:
        """The prompt that makes the model write its thinking: the chat so far, thinking opened."""

    @abstractmethod
    def answer_suffix(self) -> str:
        """What closes the thinking and opens the answer, appended after the thinking text."""

    @abstractmethod
    def render_response(self, thinking: str, answer: str) -> str:
        """The whole assistant message as stored in the data (thinking and answer)."""

    def render_answer(self, messages: Sequence[Message], thinking: str) -> str:
        """The prompt that makes the model write its answer after the given thinking."""
        return self.render_think(messages) + thinking + self.answer_suffix()

    def find_think_end(self, text: str) -> tuple[int, int] | None:
        """The ``(start, end)`` character span of the end-of-thinking marker in ``text``, if any."""
        best: tuple[int, int] | None = None
        for marker in self.think_stop:
            i = text.find(marker)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, i + len(marker))
        return best

    def with_messages(self, messages: Sequence[Message]) -> list[Message]:
        """The messages with this format's default system prompt added where none is given."""
        _check_messages(messages)
        if self.system_prompt and messages[0]["role"] != "system":
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return list(messages)


def _check_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise FormatError("cannot render an empty conversation: give at least one user message")
    if messages[-1].get("role") != "user":
        raise FormatError(f"the last message must be the user's turn to answer, got role {messages[-1].get('role')!r}")


class _ThinkTagFormat(Format):
    """Formats that wrap thinking in ``<think>`` ... ``</think>``."""

    think_stop = ("</think>",)

    def answer_suffix(self) -> str:
        return "\n</think>\n\n"

    def render_response(self, thinking: str, answer: str) -> str:
        return f"<think>\n{thinking}\n</think>\n\n{answer}"


class Qwen3Format(_ThinkTagFormat):
    """Qwen3 thinking models (ChatML with ``<think>`` opened after the assistant header)."""

    name = "qwen3"

    def render_think(self, messages: Sequence[Message]) -> str:
        parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in self.with_messages(messages)]
        parts.append("<|im_start|>assistant\n<think>\n")
        return "".join(parts)


class ChatMLThinkFormat(Qwen3Format):
    """ChatML instruct models without native thinking (SmolLM2, Qwen2.5) with ``<think>`` pre-filled.

    Such a model may close the thinking itself with ``</think>`` or simply end its turn; the
    engine treats its end-of-sequence during thinking as the end of thinking.
    """

    name = "chatml"


class DeepSeekR1Format(_ThinkTagFormat):
    """DeepSeek-R1 and its distills."""

    name = "deepseek-r1"
    bos = "<｜begin▁of▁sentence｜>"

    def render_think(self, messages: Sequence[Message]) -> str:
        msgs = self.with_messages(messages)
        parts = [self.bos]
        for m in msgs:
            if m["role"] == "system":
                parts.append(m["content"])
            elif m["role"] == "user":
                parts.append(f"<｜User｜>{m['content']}")
            else:
                parts.append(f"<｜Assistant｜>{m['content']}<｜end▁of▁sentence｜>")
        parts.append("<｜Assistant｜><think>\n")
        return "".join(parts)


_REGISTRY: dict[str, Callable[..., Format]] = {}


def register_format(name: str, factory: Callable[..., Format]) -> None:
    """Make a format available to configs under ``name``."""
    _REGISTRY[name] = factory


def format_names() -> list[str]:
    return sorted(_REGISTRY)


def get_format(name: str, *, system_prompt: str | None = None) -> Format:
    """The format registered under ``name``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown format {name!r}; choose one of: {', '.join(format_names())}") from None
    return factory(system_prompt=system_prompt)


for _cls in (Qwen3Format, ChatMLThinkFormat, DeepSeekR1Format):
    register_format(_cls.name, _cls)
