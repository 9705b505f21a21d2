"""Formats at the text level: rendering, end of thinking, answers, options, ``tessy render``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from tessy.cli import main
from tessy.errors import ConfigError
from tessy.formats import (
    ChatMLThinkFormat,
    HarmonyFormat,
    TemplateFormat,
    check_format_options,
    format_names,
    get_format,
    render_prompt,
)
from tessy.records import Message

USER: list[Message] = [{"role": "user", "content": "What is 2+2?"}]
WITH_SYSTEM: list[Message] = [{"role": "system", "content": "Be brief."}, *USER]
MULTI_TURN: list[Message] = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\nGreeting.\n</think>\n\nHello!"},
    {"role": "user", "content": "What is 2+2?"},
]

SYSTEM_GPT_OSS = (
    "You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\n"
    "Current date: 2026-11-26\n\n"
    "Reasoning: high\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message."
)


def gpt_oss(**options: Any) -> HarmonyFormat:
    fmt = get_format("gpt-oss", options={"current_date": "2026-11-26", **options})
    assert isinstance(fmt, HarmonyFormat)
    return fmt


class TestThinkTagFormats:
    def test_qwen3_opens_thinking_after_the_assistant_header(self) -> None:
        assert get_format("qwen3").render_think(WITH_SYSTEM) == (
            "<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n"
        )

    def test_qwen3_drops_the_thinking_of_earlier_turns_as_its_template_does(self) -> None:
        rendered = get_format("qwen3").render_think(MULTI_TURN)
        assert "<|im_start|>assistant\nHello!<|im_end|>\n" in rendered
        assert "Greeting" not in rendered

    def test_deepseek_r1_starts_with_bos_and_opens_thinking(self) -> None:
        fmt = get_format("deepseek-r1")
        assert fmt.includes_bos
        assert fmt.render_think(WITH_SYSTEM) == (
            "<｜begin▁of▁sentence｜>Be brief.<｜User｜>What is 2+2?<｜Assistant｜><think>\n"
        )
        assert "<｜Assistant｜>Hello!<｜end▁of▁sentence｜><｜User｜>" in fmt.render_think(MULTI_TURN)

    @pytest.mark.parametrize("name", ["qwen3", "deepseek-r1", "chatml"])
    def test_think_tags_close_and_store(self, name: str) -> None:
        fmt = get_format(name)
        assert fmt.find_think_end("so 4.\n</think>\n\nAnswer") == (6, 14)
        assert fmt.render_answer(USER, "so 4.").endswith("<think>\nso 4.\n</think>\n\n")
        assert fmt.render_response("so 4.", "4") == "<think>\nso 4.\n</think>\n\n4"


class TestHarmony:
    def test_prompt_layout_matches_the_harmony_guide(self) -> None:
        assert gpt_oss().render_think(USER) == (
            f"<|start|>system<|message|>{SYSTEM_GPT_OSS}<|end|>"
            "<|start|>user<|message|>What is 2+2?<|end|>"
            "<|start|>assistant<|channel|>analysis<|message|>"
        )

    def test_a_system_prompt_becomes_the_developer_instructions(self) -> None:
        rendered = gpt_oss().render_think(WITH_SYSTEM)
        assert "<|start|>developer<|message|># Instructions\n\nBe brief.<|end|><|start|>user" in rendered
        assert rendered.count("<|start|>system") == 1

    def test_earlier_turns_keep_only_their_final_channel(self) -> None:
        rendered = gpt_oss().render_think(MULTI_TURN)
        assert "<|start|>assistant<|channel|>final<|message|>Hello!<|end|><|start|>user" in rendered
        assert "Greeting" not in rendered

    def test_reasoning_effort_and_dates_are_options(self) -> None:
        rendered = gpt_oss(reasoning_effort="low", knowledge_cutoff="2025-01").render_think(USER)
        assert "\n\nReasoning: low\n\n" in rendered
        assert "Knowledge cutoff: 2025-01\n" in rendered
        assert "Current date" not in gpt_oss(current_date="").render_think(USER)
        with pytest.raises(ConfigError, match="reasoning_effort"):
            gpt_oss(reasoning_effort="extreme")

    def test_the_date_defaults_to_today(self) -> None:
        import datetime

        today = datetime.date.today().isoformat()
        assert f"Current date: {today}\n" in get_format("gpt-oss").render_think(USER)

    @pytest.mark.parametrize(
        "text",
        [
            "so 2 + 2 = 4.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>",
            "so 2 + 2 = 4.assistantfinal4",  # a server that strips special tokens from the text
        ],
    )
    def test_thinking_ends_at_the_switch_to_the_final_channel(self, text: str) -> None:
        start, _ = gpt_oss().find_think_end(text) or (-1, -1)
        assert text[:start] == "so 2 + 2 = 4."

    def test_answer_prompt_and_stored_response(self) -> None:
        fmt = gpt_oss()
        assert fmt.render_answer(USER, "4.").endswith(
            "<|channel|>analysis<|message|>4.<|end|><|start|>assistant<|channel|>final<|message|>"
        )
        assert "<|return|>" in fmt.answer_stop
        assert fmt.render_response("so 4.", "4") == (
            "<|channel|>analysis<|message|>so 4.<|end|><|start|>assistant<|channel|>final<|message|>4"
        )


class FakeTemplate:
    """A tokenizer-like object with a chat template, rendered in Python."""

    def __init__(self, default_system: str | None = None, opens: str = "") -> None:
        self.default_system = default_system
        self.opens = opens
        self.calls: list[dict[str, Any]] = []

    @property
    def chat_template(self) -> str | None:
        return "{# fake #}"

    def apply_chat_template(self, messages: Sequence[Message], **kwargs: Any) -> str:
        self.calls.append(kwargs)
        msgs = list(messages)
        if self.default_system and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.default_system})
        body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
        return body + "<|im_start|>assistant\n" + self.opens


class TestChatML:
    def test_without_a_tokenizer_it_is_plain_chatml(self) -> None:
        assert get_format("chatml").render_think(USER) == (
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n"
        )

    def test_the_templates_default_system_prompt_is_used_when_none_is_given(self) -> None:
        template = FakeTemplate(default_system="You are SmolLM.")
        fmt = get_format("chatml", tokenizer=template)
        assert isinstance(fmt, ChatMLThinkFormat)
        assert fmt.default_system == "You are SmolLM."
        assert fmt.render_think(USER) == template.apply_chat_template(USER) + "<think>\n"
        # The conversation's own system message wins, then the role's system_prompt.
        assert fmt.render_think(WITH_SYSTEM) == template.apply_chat_template(WITH_SYSTEM) + "<think>\n"
        own = get_format("chatml", tokenizer=template, system_prompt="Think step by step.")
        assert own.render_think(USER).startswith("<|im_start|>system\nThink step by step.<|im_end|>\n<|im_start|>user")

    @pytest.mark.parametrize("end", ["<|im_end|>", "<|endoftext|>"])
    def test_the_end_of_the_turn_ends_thinking(self, end: str) -> None:
        fmt = get_format("chatml")
        assert fmt.find_think_end(f"so 4.{end}") == (5, 5 + len(end))
        assert end in fmt.answer_stop

    def test_default_system_option_overrides_or_removes_it(self) -> None:
        template = FakeTemplate(default_system="You are SmolLM.")
        assert (
            get_format("chatml", tokenizer=template, options={"default_system": ""})
            .render_think(USER)
            .startswith("<|im_start|>user")
        )
        assert "X<|im_end|>" in get_format("chatml", options={"default_system": "X"}).render_think(USER)


class TestTemplateFormat:
    def test_renders_through_the_template_and_opens_thinking(self) -> None:
        template = FakeTemplate()
        fmt = get_format("template", tokenizer=template, options={"template_kwargs": {"enable_thinking": True}})
        assert fmt.render_think(USER) == template.apply_chat_template(USER) + "<think>\n"
        assert template.calls[0]["enable_thinking"] is True
        assert fmt.think_stop == ("</think>",)

    @pytest.mark.parametrize("opens", ["<think>\n", "<think>"])
    def test_does_not_open_thinking_twice(self, opens: str) -> None:
        fmt = get_format("template", tokenizer=FakeTemplate(opens=opens))
        assert fmt.render_think(USER).endswith("assistant\n<think>\n")

    def test_custom_markers(self) -> None:
        fmt = get_format("template", tokenizer=FakeTemplate(), options={"think_open": "[T]", "think_close": "[/T]"})
        assert isinstance(fmt, TemplateFormat)
        assert fmt.render_think(USER).endswith("assistant\n[T]")
        assert fmt.find_think_end("abc[/T]") == (3, 7)
        assert fmt.render_response("a", "b") == "[T]a\n[/T]\n\nb"

    def test_needs_a_tokenizer_with_a_template(self) -> None:
        with pytest.raises(ConfigError, match="tokenizer"):
            get_format("template")


class TestOptions:
    def test_every_format_is_registered(self) -> None:
        assert set(format_names()) >= {"qwen3", "deepseek-r1", "gpt-oss", "chatml", "template"}

    def test_unknown_options_are_rejected_naming_the_accepted_ones(self) -> None:
        with pytest.raises(ConfigError, match="reasoning_effort"):
            check_format_options("gpt-oss", {"effort": "high"})
        with pytest.raises(ConfigError, match="no option"):
            get_format("qwen3", options={"x": 1})
        with pytest.raises(ConfigError, match="unknown format"):
            check_format_options("llama9", {})


class TestRender:
    def test_render_prompt_returns_the_text(self) -> None:
        rendered = render_prompt("qwen3", "Hi")
        assert rendered.text.endswith("<|im_start|>assistant\n<think>\n")
        assert rendered.token_ids is None
        answer = render_prompt("qwen3", "Hi", thinking="ok")
        assert answer.text.endswith("<think>\nok\n</think>\n\n")

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["qwen3"], "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"),
            (["chatml"], "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"),
            (["deepseek-r1"], "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>\n"),
            (
                ["gpt-oss", "--option", "current_date=2026-11-26"],
                f"<|start|>system<|message|>{SYSTEM_GPT_OSS}<|end|>"
                "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>analysis<|message|>",
            ),
        ],
    )
    def test_cli_prints_exactly_the_prompt(
        self, args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["render", "--format", *args, "--prompt", "Hi"]) == 0
        assert capsys.readouterr().out == expected

    def test_cli_rejects_an_unknown_option(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["render", "--format", "qwen3", "--prompt", "Hi", "--option", "current_date=x"]) == 1
        assert "no option current_date" in capsys.readouterr().err

    def test_cli_json_and_system_prompt(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["render", "--format", "qwen3", "--prompt", "Hi", "--system", "Be brief.", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
        assert data["token_ids"] is None
