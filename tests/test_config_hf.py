"""Config for the hf backend, role tokenizers and format options (no model is loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tessy.config import HFRole, ScriptedRole, load_config, validate_config
from tessy.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def config(**student: Any) -> dict[str, Any]:
    return {
        "teacher": {"backend": "scripted", "responses": ["x"]},
        "student": {"backend": "hf", "model": "smollm2-135m", "format": "chatml", **student},
    }


def test_an_hf_role_has_documented_defaults() -> None:
    cfg = validate_config(config())
    assert isinstance(cfg.student, HFRole) and isinstance(cfg.teacher, ScriptedRole)
    assert (cfg.student.device, cfg.student.dtype, cfg.student.max_batch_size) == ("auto", "auto", 8)
    assert cfg.student.tokenizer is None and cfg.student.format_options == {}
    for name in ("model", "device", "dtype", "max_batch_size", "cache_tokens", "tokenizer", "format_options"):
        assert HFRole.model_fields[name].description, f"HFRole.{name} is not documented"


def test_where_a_model_runs_does_not_change_the_hash_but_its_dtype_does() -> None:
    base = validate_config(config()).config_hash()
    assert validate_config(config(device="cuda", max_batch_size=2, cache_tokens=0)).config_hash() == base
    assert validate_config(config(dtype="bfloat16")).config_hash() != base
    assert validate_config(config(format_options={"default_system": ""})).config_hash() != base


@pytest.mark.parametrize(
    ("student", "where", "says"),
    [
        ({"backend": "vllm"}, "student.backend:", "choose one of: 'scripted', 'openai', 'llamacpp', 'hf'"),
        ({"dtype": "float8"}, "student.dtype:", ""),
        ({"bogus": 1}, "student.bogus:", "not permitted"),
        ({"format_options": {"effort": "high"}}, "student:", "no option effort"),
        ({"format": "llama9"}, "student:", "unknown format"),
    ],
)
def test_mistakes_are_named_where_they_are(student: dict[str, Any], where: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(config(**student))
    assert where in str(info.value) and says in str(info.value)


def test_a_missing_backend_is_named() -> None:
    with pytest.raises(ConfigError, match=r"student\.backend: say which backend"):
        validate_config({"teacher": {"backend": "scripted", "responses": ["x"]}, "student": {"responses": ["x"]}})


def test_tokenizer_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    path = tmp_path / "run.yaml"
    path.write_text(
        "teacher: {backend: scripted, responses: [x], tokenizer: tok}\n"
        "student: {backend: hf, model: smollm2-135m, tokenizer: not-there}\n",
        encoding="utf-8",
    )
    cfg = load_config(path)
    assert cfg.teacher.tokenizer == str(tmp_path / "tok")
    assert cfg.student.tokenizer == "not-there"  # left alone: loading it will say it is missing
    assert isinstance(cfg.student, HFRole) and cfg.student.model == "smollm2-135m"


def test_the_hf_example_is_valid() -> None:
    cfg = load_config(EXAMPLES / "hf-cpu.yaml")
    assert isinstance(cfg.student, HFRole) and isinstance(cfg.teacher, HFRole)
    assert (cfg.student.model, cfg.teacher.model) == ("smollm2-135m", "qwen2.5-coder-0.5b")


def test_models_are_found_as_folders_files_hub_ids_or_catalogue_names(tmp_path: Path) -> None:
    from tessy.hf import locate

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert (locate(tmp_path).folder, locate(tmp_path).gguf_file) == (tmp_path, None)
    assert (locate(str(gguf)).folder, locate(str(gguf)).gguf_file) == (tmp_path, "m.gguf")
    hub = locate("Qwen/Qwen3-0.6B-Base")  # the paper's predictor backbone, fetched by transformers
    assert str(hub.path) == "Qwen/Qwen3-0.6B-Base" and hub.gguf_file is None
    for wrong in ("no-such-model", str(tmp_path / "missing" / "x.gguf"), "a/b/c"):
        with pytest.raises(ConfigError, match="Hub id"):
            locate(wrong)
