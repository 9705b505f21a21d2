"""Exports trainers read right: the thinking as its own field of the assistant message renders,
through real chat templates, exactly as the stored response; and TRL's dataset preparation puts
the loss on exactly the response.

The Qwen3 and gpt-oss templates are the ones TRL ships (``trl/chat_templates``: the models'
own templates, and ``*_training`` copies that mark the assistant's output for assistant-only
loss); the tokenizers are a tiny byte-level BPE built on the spot and, marked ``real``, the
Qwen2.5 and SmolLM2 tokenizers of the catalogued GGUF models with their own templates.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import pytest

from export_fixtures import ANSWER, THINKING, record, write_run
from tessy.export import export_run
from tessy.formats import HarmonyFormat

pytest.importorskip("transformers")
trl = pytest.importorskip("trl")

PROMPT = "What is 17 + 25?"
HARMONY_TOKENS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>")
STORED = f"<think>\n{THINKING}\n</think>\n\n{ANSWER}"


def template(name: str) -> str:
    return (importlib.resources.files("trl") / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tiny() -> Any:
    from tiny_models import tiny_tokenizer

    return tiny_tokenizer()


def real_tokenizer(name: str) -> Any:
    from real_models import model_path
    from tessy.hf import load_hf_tokenizer

    return load_hf_tokenizer(model_path(name))


TOKENIZERS = [
    "tiny",
    pytest.param("qwen2.5-coder-0.5b", marks=pytest.mark.real),
    pytest.param("smollm2-135m", marks=pytest.mark.real),
]


@pytest.fixture(params=TOKENIZERS)
def tokenizer(request: pytest.FixtureRequest, tiny: Any) -> Any:
    return tiny if request.param == "tiny" else real_tokenizer(request.param)


def exported(tmp_path: Path, fmt: str, **kwargs: Any) -> list[dict[str, Any]]:
    harmony = kwargs.pop("harmony", False)
    run = write_run(
        tmp_path / "run.jsonl", [record("s1", harmony=harmony)], student_format="gpt-oss" if harmony else "qwen3"
    )
    out = export_run(run, fmt, tmp_path / f"{fmt}.jsonl", **kwargs)
    return [json.loads(line) for line in out.path.read_text().splitlines()]


def test_reasoning_content_renders_through_qwen3s_template_as_the_stored_response(
    tmp_path: Path, tokenizer: Any
) -> None:
    (row,) = exported(tmp_path, "trl", reasoning_field="reasoning_content")
    assistant = row["messages"][-1]
    assert assistant == {"role": "assistant", "content": ANSWER, "reasoning_content": THINKING}
    text = tokenizer.apply_chat_template(row["messages"], chat_template=template("qwen3"), tokenize=False)
    assert text == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n{STORED}<|im_end|>\n"


@pytest.mark.real
@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "smollm2-135m"])
def test_the_stored_export_renders_whole_in_a_chatml_models_own_template(tmp_path: Path, name: str) -> None:
    tok = real_tokenizer(name)
    (row,) = exported(tmp_path, "trl")
    text = tok.apply_chat_template(row["messages"], tokenize=False)
    assert f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n{STORED}<|im_end|>" in text


def test_a_gpt_oss_run_exports_its_thinking_as_the_gpt_oss_templates_thinking_field(
    tmp_path: Path, tokenizer: Any
) -> None:
    import jinja2

    raw = record("s1", harmony=True).messages
    with pytest.raises(jinja2.TemplateError, match="'thinking' field"):  # the stored harmony text is refused
        tokenizer.apply_chat_template(raw, chat_template=template("gptoss"), tokenize=False)
    (row,) = exported(tmp_path, "trl", harmony=True)  # no option: a gpt-oss student's default
    assert row["messages"][-1] == {"role": "assistant", "content": ANSWER, "thinking": THINKING}
    text = tokenizer.apply_chat_template(row["messages"], chat_template=template("gptoss"), tokenize=False)
    stored = raw[-1]["content"]
    assert stored == HarmonyFormat().render_response(THINKING, ANSWER)
    assert text.endswith(f"<|start|>user<|message|>{PROMPT}<|end|><|start|>assistant{stored}<|return|>")


def sft_masked(
    tokenizer: Any, rows: list[dict[str, Any]], chat_template: str, tmp_path: Path, **config: Any
) -> list[str]:
    """What TRL's SFTTrainer puts the loss on, per row: the tokens its dataset preparation marks."""
    import datasets
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
        )
    )
    template_file = tmp_path / "template.jinja"
    template_file.write_text(chat_template, encoding="utf-8")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        report_to="none",
        use_cpu=True,
        max_length=None,
        chat_template_path=str(template_file),
        **config,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer
    )
    out = []
    for example in trainer.train_dataset:
        # TRL folds its masks into the labels: -100 is a token without loss.
        out.append(tokenizer.decode([t for t in example["labels"] if t != -100]))
    return out


def test_trl_assistant_only_loss_covers_exactly_the_response(tmp_path: Path, tokenizer: Any) -> None:
    rows = exported(tmp_path, "trl", reasoning_field="reasoning_content")
    masked = sft_masked(tokenizer, rows, template("qwen3_training"), tmp_path, assistant_only_loss=True)
    assert masked == [f"{STORED}<|im_end|>\n"]


def test_trl_completion_only_loss_covers_exactly_the_response(tmp_path: Path, tokenizer: Any) -> None:
    rows = exported(tmp_path, "prompt-completion", reasoning_field="reasoning_content")
    masked = sft_masked(tokenizer, rows, template("qwen3"), tmp_path, completion_only_loss=True)
    assert masked == [f"{STORED}<|im_end|>\n"]


def test_trl_assistant_only_loss_on_a_gpt_oss_export(tmp_path: Path, tokenizer: Any) -> None:
    import copy

    # gpt-oss's tokenizer has harmony's markers as special tokens; one without them would merge
    # the user turn's closing "|>" with the next "<|" into one token across the turn boundary.
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(HARMONY_TOKENS)})
    rows = exported(tmp_path, "trl", harmony=True)
    masked = sft_masked(tokenizer, rows, template("gptoss_training"), tmp_path, assistant_only_loss=True)
    assert masked == [f"<|start|>assistant{HarmonyFormat().render_response(THINKING, ANSWER)}<|return|>"]


def test_a_parquet_export_with_a_reasoning_field_renders_the_same(tmp_path: Path, tiny: Any) -> None:
    import datasets

    run = write_run(tmp_path / "run.jsonl", [record("s1")])
    out = export_run(run, "parquet", tmp_path / "train.parquet", reasoning_field="reasoning_content").path
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    messages = ds[0]["messages"]
    assert messages[0]["reasoning_content"] is None and messages[1]["reasoning_content"] == THINKING
    text = tiny.apply_chat_template(messages, chat_template=template("qwen3"), tokenize=False)
    assert text == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n{STORED}<|im_end|>\n"
