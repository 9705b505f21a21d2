"""Chat formats: how a role's prompt is rendered with thinking opened, and where thinking ends.

Every role renders the *shared* thinking text inside its own format: its prompt is
``render_think(messages) + shared_thinking``. When thinking is over, the answer is written
after ``answer_suffix`` (which closes thinking), and the stored response is rendered in the
*student's* format by :meth:`Format.render_response`.

Formats: ``qwen3``, ``deepseek-r1``, ``gpt-oss`` (harmony), ``chatml`` (instruct models such as
SmolLM2 and Qwen2.5 with ``<think>`` pre-filled) and ``template`` (any model's own chat template,
taken from its tokenizer). A format takes options (``format_options`` in a role's config), and
``chatml``/``template`` use the role's tokenizer where one is configured.
"""

from __future__ import annotations

import datetime
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError, FormatError
from .records import Message
from .tokenizers import TemplateTokenizer, Tokenizer

__all__ = [
    "ChatMLThinkFormat",
    "DeepSeekR1Format",
    "Format",
    "HarmonyFormat",
    "Qwen3Format",
    "RenderedPrompt",
    "TemplateFormat",
    "check_format_options",
    "format_names",
    "get_format",
    "register_format",
    "render_prompt",
]


class Format(ABC):
    """A model's chat format, as far as an interleaved thinking loop needs it."""

    name: str = ""
    #: Stop strings that end the thinking phase when generated.
    think_stop: tuple[str, ...] = ()
    #: Stop strings for the answer phase (besides the model's end-of-sequence token).
    answer_stop: tuple[str, ...] = ()
    #: The rendered text starts with the BOS token itself: whoever sends it as text must not add another.
    includes_bos: bool = False
    #: Names of the options this format accepts (a role's ``format_options``).
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, system_prompt: str | None = None, *, tokenizer: object | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(self.options) or "none"
            raise ConfigError(f"format {self.name!r} has no option {', '.join(unknown)} (it accepts: {accepted})")
        self.system_prompt = system_prompt
        self.tokenizer = tokenizer

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


def _without_thinking(content: str) -> str:
    """An earlier assistant turn as reasoning models' templates show it: the thinking dropped."""
    if "</think>" in content:
        return content.split("</think>")[-1].lstrip("\n")
    return content


#: Think tags end an answer where a model writes them again (small models do): the answer is
#: what came before, and no thinking markup reaches the stored answer.
THINK_TAGS = ("<think>", "</think>")


class _ThinkTagFormat(Format):
    """Formats that wrap thinking in ``<think>`` ... ``</think>``."""

    think_stop: tuple[str, ...] = ("</think>",)
    answer_stop: tuple[str, ...] = THINK_TAGS

    def answer_suffix(self) -> str:
        return "\n</think>\n\n"

    def render_response(self, thinking: str, answer: str) -> str:
        return f"<think>\n{thinking}\n</think>\n\n{answer}"


class Qwen3Format(_ThinkTagFormat):
    """Qwen3 thinking models: ChatML with ``<think>`` opened after the assistant header.

    Like Qwen3's template, it adds no system message of its own and drops the thinking of
    earlier assistant turns.
    """

    name = "qwen3"

    def render_think(self, messages: Sequence[Message]) -> str:
        return _chatml(self.with_messages(messages), strip_thinking=True) + "<think>\n"


def _chatml(messages: Sequence[Message], *, strip_thinking: bool) -> str:
    parts = []
    for m in messages:
        content = m["content"]
        if strip_thinking and m["role"] == "assistant":
            content = _without_thinking(content)
        parts.append(f"<|im_start|>{m['role']}\n{content}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


class ChatMLThinkFormat(Qwen3Format):
    """ChatML instruct models without native thinking (SmolLM2, Qwen2.5) with ``<think>`` pre-filled.

    Such a model may close the thinking itself with ``</think>`` or simply end its turn; the
    engine treats its end-of-sequence during thinking as the end of thinking.

    The system message, in order of precedence: the conversation's own; the role's
    ``system_prompt``; the ``default_system`` option; the default of the model's chat template
    when the role has a tokenizer (SmolLM2 and Qwen2.5 templates add one when a conversation has
    none); else no system message. So with the model's tokenizer and no ``system_prompt``, the
    rendering equals the model's own template with ``<think>\\n`` appended.
    """

    name = "chatml"
    options = ("default_system",)
    # The end of the turn, where a server leaves special tokens in the text, ends thinking too
    # (Qwen2.5 may end with <|endoftext|>, which its GGUF files do not list as end of sequence).
    think_stop = ("</think>", "<|im_end|>", "<|endoftext|>")
    answer_stop = ("<|im_end|>", "<|endoftext|>", *THINK_TAGS)

    def __init__(
        self,
        system_prompt: str | None = None,
        *,
        tokenizer: object | None = None,
        default_system: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(system_prompt, tokenizer=tokenizer, **options)
        if default_system is None and isinstance(tokenizer, TemplateTokenizer):
            default_system = _template_default_system(tokenizer)
        self.default_system = default_system or None

    def render_think(self, messages: Sequence[Message]) -> str:
        msgs = self.with_messages(messages)
        if self.default_system and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": self.default_system}, *msgs]
        return _chatml(msgs, strip_thinking=False) + "<think>\n"


_PROBE = "\x00tessy-probe\x00"


def _template_default_system(tokenizer: TemplateTokenizer) -> str | None:
    """The system message a ChatML template adds to a conversation that has none."""
    if not tokenizer.chat_template:
        return None
    try:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": _PROBE}])
    except Exception:  # a template that cannot render a bare user turn adds no default we can use
        return None
    head, sep, _ = rendered.partition(f"<|im_start|>user\n{_PROBE}")
    if not sep or not head.startswith("<|im_start|>system\n") or not head.endswith("<|im_end|>\n"):
        return None
    return head[len("<|im_start|>system\n") : -len("<|im_end|>\n")]


class DeepSeekR1Format(_ThinkTagFormat):
    """DeepSeek-R1 and its distills. The text starts with the BOS token, as the template's does."""

    name = "deepseek-r1"
    bos = "<｜begin▁of▁sentence｜>"
    includes_bos = True
    answer_stop = ("<｜end▁of▁sentence｜>", *THINK_TAGS)

    def render_think(self, messages: Sequence[Message]) -> str:
        msgs = self.with_messages(messages)
        parts = [self.bos]
        for m in msgs:
            if m["role"] == "system":
                parts.append(m["content"])
            elif m["role"] == "user":
                parts.append(f"<｜User｜>{m['content']}")
            else:
                parts.append(f"<｜Assistant｜>{_without_thinking(m['content'])}<｜end▁of▁sentence｜>")
        parts.append("<｜Assistant｜><think>\n")
        return "".join(parts)


class HarmonyFormat(Format):
    """GPT-OSS models, in the harmony format.

    The system message carries the model identity, knowledge cutoff, current date, reasoning
    effort and valid channels; a conversation's own system message becomes the developer
    message's instructions. Thinking is the ``analysis`` channel; it ends where the model closes
    that message and opens the ``final`` channel: ``<|end|><|start|>assistant<|channel|>final
    <|message|>``, which reads ``assistantfinal`` when a server strips special tokens from the
    text. The answer ends with ``<|return|>``.

    Options: ``reasoning_effort`` (low, medium, high; default high), ``current_date``
    (``YYYY-MM-DD``; default today, ``""`` leaves the line out), ``knowledge_cutoff`` (default
    2024-06) and ``model_identity``.
    """

    name = "gpt-oss"
    options = ("reasoning_effort", "current_date", "knowledge_cutoff", "model_identity")
    think_stop = ("<|end|>", "assistantfinal")
    # A channel or message header in the answer is markup, never answer text.
    answer_stop = ("<|return|>", "<|end|>", "<|call|>", "<|start|>", "<|channel|>")

    FINAL = "<|start|>assistant<|channel|>final<|message|>"

    def __init__(
        self,
        system_prompt: str | None = None,
        *,
        tokenizer: object | None = None,
        reasoning_effort: str = "high",
        current_date: str | datetime.date | None = None,
        knowledge_cutoff: str = "2024-06",
        model_identity: str = "You are ChatGPT, a large language model trained by OpenAI.",
        **options: Any,
    ) -> None:
        super().__init__(system_prompt, tokenizer=tokenizer, **options)
        if reasoning_effort not in ("low", "medium", "high"):
            raise ConfigError(f"gpt-oss: reasoning_effort must be low, medium or high, not {reasoning_effort!r}")
        self.reasoning_effort = reasoning_effort
        self.current_date = str(current_date) if current_date is not None else None
        self.knowledge_cutoff = knowledge_cutoff
        self.model_identity = model_identity

    def system_message(self) -> str:
        date = self.current_date if self.current_date is not None else datetime.date.today().isoformat()
        lines = [self.model_identity, f"Knowledge cutoff: {self.knowledge_cutoff}"]
        if date:
            lines.append(f"Current date: {date}")
        return (
            "\n".join(lines)
            + f"\n\nReasoning: {self.reasoning_effort}\n\n"
            + "# Valid channels: analysis, commentary, final. Channel must be included for every message."
        )

    def render_think(self, messages: Sequence[Message]) -> str:
        msgs = self.with_messages(messages)
        parts = [f"<|start|>system<|message|>{self.system_message()}<|end|>"]
        for m in msgs:
            if m["role"] in ("system", "developer"):
                parts.append(f"<|start|>developer<|message|># Instructions\n\n{m['content']}<|end|>")
            elif m["role"] == "user":
                parts.append(f"<|start|>user<|message|>{m['content']}<|end|>")
            else:  # earlier answers keep only their final channel
                parts.append(f"{self.FINAL}{_without_thinking(m['content'])}<|end|>")
        parts.append("<|start|>assistant<|channel|>analysis<|message|>")
        return "".join(parts)

    def answer_suffix(self) -> str:
        return "<|end|>" + self.FINAL

    def render_response(self, thinking: str, answer: str) -> str:
        # What follows `<|start|>assistant`: the analysis message, then the final one.
        return f"<|channel|>analysis<|message|>{thinking}<|end|>{self.FINAL}{answer}"


class TemplateFormat(Format):
    """Any model, rendered through its tokenizer's own chat template (``apply_chat_template``
    with the generation prompt), then thinking opened with ``think_open`` unless the template
    already opened it. Needs the role's ``tokenizer``.

    Options: ``think_open`` (default ``<think>\\n``), ``think_close`` (default ``</think>``),
    ``template_kwargs`` (extra variables for the template, e.g. ``{enable_thinking: true}``) and
    ``chat_template`` (a template text or ``.jinja`` file used instead of the tokenizer's).
    """

    name = "template"
    options = ("think_open", "think_close", "template_kwargs", "chat_template")

    def __init__(
        self,
        system_prompt: str | None = None,
        *,
        tokenizer: object | None = None,
        think_open: str = "<think>\n",
        think_close: str = "</think>",
        template_kwargs: Mapping[str, Any] | None = None,
        chat_template: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(system_prompt, tokenizer=tokenizer, **options)
        if not isinstance(tokenizer, TemplateTokenizer):
            raise ConfigError("the template format renders through the model's chat template: set the role's tokenizer")
        if chat_template and chat_template.endswith(".jinja") and Path(chat_template).is_file():
            chat_template = Path(chat_template).read_text(encoding="utf-8")
        if not (chat_template or tokenizer.chat_template):
            raise ConfigError(f"the tokenizer {tokenizer!r} has no chat template; give one in the chat_template option")
        if not think_close:
            raise ConfigError("the template format needs think_close, the text that ends thinking")
        self.template: TemplateTokenizer = tokenizer
        self.think_open = think_open
        self.think_close = think_close
        self.think_stop = (think_close,)
        self.answer_stop = tuple(t for t in dict.fromkeys((think_open.strip(), think_close.strip())) if t)
        self.template_kwargs = dict(template_kwargs or {})
        if chat_template:
            self.template_kwargs["chat_template"] = chat_template

    def render_think(self, messages: Sequence[Message]) -> str:
        rendered = self.template.apply_chat_template(
            self.with_messages(messages), add_generation_prompt=True, **self.template_kwargs
        )
        opened = self.think_open
        if rendered.endswith(opened):
            return rendered
        stem = opened.rstrip()
        if stem and rendered.endswith(stem):  # opened without the trailing newline
            return rendered + opened[len(stem) :]
        return rendered + opened

    def answer_suffix(self) -> str:
        return f"\n{self.think_close}\n\n"

    def render_response(self, thinking: str, answer: str) -> str:
        return f"{self.think_open}{thinking}\n{self.think_close}\n\n{answer}"


_REGISTRY: dict[str, Callable[..., Format]] = {}


def register_format(name: str, factory: Callable[..., Format]) -> None:
    """Make a format available to configs under ``name``."""
    _REGISTRY[name] = factory


def format_names() -> list[str]:
    return sorted(_REGISTRY)


def check_format_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for an unknown format or an option it does not accept."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"unknown format {name!r}; choose one of: {', '.join(format_names())}")
    accepted: tuple[str, ...] = getattr(factory, "options", ())
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"format {name!r} has no option {', '.join(unknown)} (it accepts: {', '.join(accepted) or 'none'})"
        )


def get_format(
    name: str,
    *,
    system_prompt: str | None = None,
    tokenizer: object | None = None,
    options: Mapping[str, Any] | None = None,
) -> Format:
    """The format registered under ``name``, with its options."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown format {name!r}; choose one of: {', '.join(format_names())}") from None
    try:
        return factory(system_prompt=system_prompt, tokenizer=tokenizer, **dict(options or {}))
    except TypeError as exc:  # a bad option value
        raise ConfigError(f"format {name!r}: {exc}") from exc


for _cls in (Qwen3Format, ChatMLThinkFormat, DeepSeekR1Format, HarmonyFormat, TemplateFormat):
    register_format(_cls.name, _cls)


@dataclass(frozen=True)
class RenderedPrompt:
    """A role's prompt as a server receives it: the text, and its token ids where a tokenizer is known."""

    text: str
    token_ids: list[int] | None = None


def render_prompt(
    format: str,
    prompt: str | Sequence[Message],
    *,
    system_prompt: str | None = None,
    tokenizer: str | Path | Tokenizer | None = None,
    options: Mapping[str, Any] | None = None,
    thinking: str | None = None,
) -> RenderedPrompt:
    """Exactly what a role sends for its first thinking request (or, given ``thinking``, for
    its answer). ``tokenizer`` is a loaded tokenizer, or a folder, GGUF file or catalogued model
    name to load one from; with it the token ids are returned too."""
    tok: Tokenizer | None
    if tokenizer is None or isinstance(tokenizer, Tokenizer):
        tok = tokenizer
    else:
        from .tokenizers import load_tokenizer

        tok = load_tokenizer(tokenizer)
    messages: list[Message] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    fmt = get_format(format, system_prompt=system_prompt, tokenizer=tok, options=options)
    text = fmt.render_think(messages) if thinking is None else fmt.render_answer(messages, thinking)
    ids = tok.encode_pieces(text, first=not fmt.includes_bos)[0] if tok is not None else None
    return RenderedPrompt(text, ids)
