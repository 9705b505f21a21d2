"""Real tokenizers (SmolLM2-135M and Qwen2.5-Coder-0.5B, from their GGUF files): exact pieces,
the real chat templates, and token-exact hand-offs between two vocabularies.

Qwen2.5's vocabulary is Qwen3's less a few added tokens, so the Qwen side stands in for a Qwen3
student or teacher; SmolLM2 is a different byte-level BPE, which makes every hand-off a real
cross-tokenizer splice.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import pytest

from real_models import model_path, tokenizer
from tessy import Engine, Role, Sample, SampleResult, get_format
from tessy.backends import Backend, GenerateRequest, Generation
from tessy.boundary import LexiconPredictor
from tessy.formats import ChatMLThinkFormat, render_prompt
from tessy.records import Message
from tessy.tokenizers import HFTokenizer, load_tokenizer

pytestmark = pytest.mark.real

NAMES = ["smollm2-135m", "qwen2.5-coder-0.5b"]
TRICKY = [
    "Okay, so 17 + 25 = 42.",
    "café naïve — “quotes” 😀👍🏽 日本語のテキスト 한국어",
    "  leading spaces\n\n\ttabs and\r\nlines  ",
    "<|im_start|>user\nspecial tokens parse<|im_end|>\n",
    "def f(x):\n    return x**2  # 🐍",
]


@pytest.fixture(scope="module", params=NAMES)
def tok(request: pytest.FixtureRequest) -> HFTokenizer:
    return tokenizer(request.param)  # type: ignore[no-any-return]


class TestPieces:
    @pytest.mark.parametrize("text", TRICKY)
    def test_pieces_are_one_per_token_and_concatenate_to_the_text(self, tok: HFTokenizer, text: str) -> None:
        ids, pieces = tok.encode_pieces(text)
        assert len(ids) == len(pieces)
        assert "".join(pieces) == text
        assert ids == tok.encode(text)
        # Decoding the ids one at a time gives pieces that concatenate to the same text.
        decoded = tok.pieces_of_ids(ids)
        assert len(decoded) == len(ids) and "".join(decoded) == text

    def test_a_split_character_goes_to_the_token_that_completes_it(self, tok: HFTokenizer) -> None:
        text = "x 😀 y"
        ids = tok.encode(text)
        decoder = tok.piece_decoder(tok.encode("Say"))
        pieces = [decoder.add(i) for i in ids]
        assert "".join(pieces) == text
        assert not decoder.holding
        assert any("😀" in p for p in pieces) and "\ufffd" not in "".join(pieces)

    def test_no_bos_is_added(self, tok: HFTokenizer) -> None:
        assert not tok.adds_bos
        ids, _ = tok.encode_pieces("<|im_start|>user\nHi", first=True)
        assert ids[0] == tok.encode("<|im_start|>")[0]


CONVERSATIONS: list[list[Message]] = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is 2+2?"},
    ],
]


class TestRealTemplates:
    @pytest.mark.parametrize("messages", CONVERSATIONS)
    def test_chatml_matches_the_models_own_template(self, tok: HFTokenizer, messages: list[Message]) -> None:
        expected = tok.apply_chat_template(messages, add_generation_prompt=True) + "<think>\n"
        chatml = get_format("chatml", tokenizer=tok)
        assert chatml.render_think(messages) == expected
        assert get_format("template", tokenizer=tok).render_think(messages) == expected

    def test_the_default_system_prompts_are_read_from_the_templates(self) -> None:
        smol = get_format("chatml", tokenizer=tokenizer("smollm2-135m"))
        qwen = get_format("chatml", tokenizer=tokenizer("qwen2.5-coder-0.5b"))
        assert isinstance(smol, ChatMLThinkFormat) and isinstance(qwen, ChatMLThinkFormat)
        assert smol.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
        assert qwen.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

    def test_render_gives_the_ids_a_server_receives(self, tok: HFTokenizer) -> None:
        rendered = render_prompt("chatml", "What is 2+2?", tokenizer=tok)
        assert rendered.token_ids == tok.encode(rendered.text)
        assert tok.decode(rendered.token_ids) == rendered.text


class TokenScript(Backend):
    """A token-in/token-out fake: answers each request with the next scripted text, as the ids
    and pieces of a real tokenizer, and records the requests."""

    accepts_token_ids = True
    returns_token_ids = True

    def __init__(self, tok: HFTokenizer, script: Sequence[str]) -> None:
        super().__init__()
        self.tok = tok
        self.script = list(script)
        self.requests: list[GenerateRequest] = []

    async def generate(self, request: GenerateRequest) -> Generation:
        self.requests.append(request)
        ids, pieces = self.tok.encode_pieces(self.script.pop(0))
        n = min(len(ids), request.max_tokens)
        return Generation(pieces[:n], "length" if n == request.max_tokens else "stop", ids[:n])


STYLE = LexiconPredictor(["okay", "so", "let me", "now", "hmm"], replace_defaults=True)


def handoff(student_tok: HFTokenizer, teacher_tok: HFTokenizer) -> tuple[SampleResult, TokenScript, TokenScript]:
    student = TokenScript(
        student_tok,
        ["Okay, so the sum of", " Hmm, let me recheck the 日本 part", "The answer is 42 😀."],
    )
    teacher = TokenScript(
        teacher_tok,
        [" 17 + 25 = 42 (naïve café check 👍🏽). Now verify", " with subtraction: 42 − 25 = 17.\n</think>"],
    )
    engine = Engine(
        Role("teacher", teacher, get_format("qwen3"), STYLE, 64, tokenizer=teacher_tok),
        Role("student", student, get_format("chatml", tokenizer=student_tok), STYLE, 64, tokenizer=student_tok),
    )
    result = asyncio.run(engine.run_sample(Sample.from_prompt("q", "What is 17 + 25?")))
    return result, student, teacher


@pytest.mark.parametrize(("student", "teacher"), [NAMES, NAMES[::-1]])
def test_cross_tokenizer_handoffs_are_token_exact(student: str, teacher: str) -> None:
    st, tt = tokenizer(student), tokenizer(teacher)
    result, s_backend, t_backend = handoff(st, tt)
    assert result.ok, result.failure
    assert result.stats.switches == 3
    for backend, tok in ((s_backend, st), (t_backend, tt)):
        previous: list[int] = []
        for req in backend.requests:
            ids = list(req.prompt.token_ids or [])
            assert tok.decode(ids) == req.prompt.text  # the ids are the text, exactly
            assert ids[: len(previous)] == previous  # and extend the previous prompt
            previous = ids
    assert result.stats.prefix_misses == 0
    # The teacher's span enters the student's prompt encoded on its own by the student's tokenizer.
    spans = [s for s in result.spans if s.phase == "think"]
    first, second = (list(r.prompt.token_ids or []) for r in s_backend.requests[:2])
    own = st.encode_pieces(spans[0].text)[0]
    assert second == first + own + st.encode(spans[1].text)
    # No word is split between the two models: every hand-off lies at whitespace.
    for a, b in itertools.pairwise(spans):
        assert a.text[-1:].isspace() or b.text[:1].isspace(), (a.text, b.text)
    # The stored thinking is the spans, in the student's format, with no foreign markup.
    thinking = "".join(s.text for s in spans)
    assert thinking == "Okay, so 17 + 25 = 42 (naïve café check 👍🏽). Hmm, let me with subtraction: 42 − 25 = 17."
    assert result.response == f"<think>\n{thinking}\n</think>\n\nThe answer is 42 😀."
    answer_prompt = s_backend.requests[-1].prompt
    messages: list[Any] = [{"role": "user", "content": "What is 17 + 25?"}]
    assert answer_prompt.text == get_format("chatml", tokenizer=st).render_answer(messages, thinking)


def test_a_gguf_tokenizer_is_converted_once_then_read_from_the_cache(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = model_path("smollm2-135m")
    monkeypatch.setenv("TESSY_CACHE", str(tmp_path))
    first = load_tokenizer(gguf)
    folders = list((tmp_path / "hf").iterdir())
    assert len(folders) == 1 and (folders[0] / "tokenizer" / "tokenizer.json").is_file()
    second = load_tokenizer(gguf)  # from the converted folder
    text = "<|im_start|>user\nHi 😀<|im_end|>"
    assert first.encode(text) == second.encode(text) == tokenizer("smollm2-135m").encode(text)
    assert second.chat_template == first.chat_template
