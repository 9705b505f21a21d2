"""Run configuration: YAML, overrides, validation, relative paths and the config hash."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tessy import ConfigError, Mode, SynthConfig, TessyError, load_config
from tessy.config import LexiconPredictorConfig, apply_overrides

BASE: dict[str, Any] = {
    "mode": "tessy",
    "student": {
        "backend": "scripted",
        "format": "qwen3",
        "chunk_tokens": 20,
        "responses": [" Okay, so let me look", " Wait, let me check"],
        "answers": ["The answer is 42."],
    },
    "teacher": {
        "backend": "scripted",
        "format": "qwen3",
        "chunk_tokens": 20,
        "responses": [" 17 + 25 = 42. Now", " done.\n</think>"],
    },
    "guards": {"max_total_tokens": 2048, "max_thinking_tokens": 1536},
    "data": {"input": "prompts.jsonl", "output": "out.jsonl"},
}


def write_config(path: Path, data: dict[str, Any] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(copy.deepcopy(BASE if data is None else data)), encoding="utf-8")
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path / "cfg" / "run.yaml")


def config_error(config_file: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config_file, list(overrides))
    return str(info.value)


def hash_of(config_file: Path, *overrides: str) -> str:
    return load_config(config_file, list(overrides)).config_hash()


# -- loading -----------------------------------------------------------------------------------


def test_load_from_yaml(config_file: Path) -> None:
    config = load_config(config_file)
    assert isinstance(config, SynthConfig)
    assert config.mode is Mode.TESSY
    assert config.student.backend == "scripted"
    assert config.student.responses == (" Okay, so let me look", " Wait, let me check")
    assert config.student.answers == ("The answer is 42.",)
    assert config.teacher.answers == ()
    assert config.teacher.chunk_tokens == 20
    assert config.guards.max_total_tokens == 2048
    assert config.guards.max_thinking_tokens == 1536
    # Defaults fill what the file leaves out.
    assert config.student.sampling.temperature == 0.7
    assert config.student.predictor == LexiconPredictorConfig()
    assert config.max_in_flight == 256
    assert config.limit is None
    assert config.data.strict is False


def test_config_is_frozen(config_file: Path) -> None:
    config = load_config(config_file)
    with pytest.raises(Exception, match="frozen"):
        config.limit = 3  # type: ignore[misc]


def test_load_from_a_dict_without_file(tmp_path: Path) -> None:
    config = load_config(data=copy.deepcopy(BASE), overrides=["limit=3"])
    assert config.limit == 3
    # Without a file, relative paths stay as given.
    assert config.data.input == Path("prompts.jsonl")


def test_load_config_does_not_modify_the_callers_dict() -> None:
    """Overrides apply to a copy: the caller's nested dicts are left as they were."""
    data = copy.deepcopy(BASE)
    load_config(data=data, overrides=["teacher.chunk_tokens=5", "data.strict=true", "student.sampling.seed=1"])
    assert data == BASE


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.yaml")


def test_config_file_that_is_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("mode: [tessy\nteacher: {", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_config_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_empty_config_file_names_the_missing_roles(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "teacher" in str(info.value)
    assert "student" in str(info.value)


def test_config_error_is_a_tessy_error() -> None:
    assert issubclass(ConfigError, TessyError)


# -- overrides ---------------------------------------------------------------------------------


def test_overrides_are_parsed_as_yaml(config_file: Path) -> None:
    config = load_config(
        config_file,
        [
            "teacher.chunk_tokens=32",
            "data.strict=true",
            "data.retry_failed=yes",
            "student.responses=[' Hmm, so', ' Right']",
            "student.sampling.temperature=0.25",
            "student.sampling.seed=7",
            "mode=teacher-think",
            "limit=5",
            "student.system_prompt=a=b",
        ],
    )
    assert config.teacher.chunk_tokens == 32
    assert config.data.strict is True
    assert config.data.retry_failed is True
    assert config.student.responses == (" Hmm, so", " Right")
    assert config.student.sampling.temperature == 0.25
    assert config.student.sampling.seed == 7
    assert config.mode is Mode.TEACHER_THINK
    assert config.limit == 5
    # Only the first '=' separates key and value.
    assert config.student.system_prompt == "a=b"
    # What the overrides do not name is as in the file.
    assert config.student.chunk_tokens == 20


def test_later_override_wins(config_file: Path) -> None:
    assert load_config(config_file, ["teacher.chunk_tokens=3", "teacher.chunk_tokens=4"]).teacher.chunk_tokens == 4


def test_override_creates_missing_sections(config_file: Path) -> None:
    config = load_config(config_file, ["teacher.sampling.top_k=5"])
    assert config.teacher.sampling.top_k == 5


def test_empty_override_value_is_null(config_file: Path) -> None:
    config = load_config(config_file, ["student.system_prompt=Be brief.", "student.system_prompt="])
    assert config.student.system_prompt is None


def test_apply_overrides_in_place() -> None:
    data: dict[str, Any] = {"a": {"b": 1}}
    out = apply_overrides(data, ["a.c=[1, 2]", "d.e.f=off", " g = 'x' "])
    assert out is data
    assert data == {"a": {"b": 1, "c": [1, 2]}, "d": {"e": {"f": False}}, "g": "x"}


@pytest.mark.parametrize("bad", ["teacher.chunk_tokens", "=5", " =5", ""])
def test_override_without_key_value_syntax(config_file: Path, bad: str) -> None:
    message = config_error(config_file, bad)
    assert "key=value" in message


def test_override_into_a_value_that_is_not_a_section(config_file: Path) -> None:
    message = config_error(config_file, "teacher.chunk_tokens.x=1")
    assert "chunk_tokens" in message
    assert "section" in message


def test_override_value_that_is_not_yaml(config_file: Path) -> None:
    message = config_error(config_file, "student.responses=[a, b")
    assert "student.responses" in message
    assert "YAML" in message


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("bogus=1", "bogus"),
        ("teacher.bogus=1", "teacher.bogus"),
        ("student.sampling.temp=1", "student.sampling.temp"),
        ("guards.max_tokens=5", "guards.max_tokens"),
        ("data.inptu=x.jsonl", "data.inptu"),
        ("student.predictor.phrase=[a]", "student.predictor.phrase"),
    ],
)
def test_unknown_keys_are_rejected_naming_the_key_path(config_file: Path, override: str, path: str) -> None:
    message = config_error(config_file, override)
    assert f"{path}:" in message
    assert "not permitted" in message or "extra" in message.lower()
    assert str(config_file) in message


def test_unknown_key_in_the_file_is_rejected(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["teacher"]["chunk_size"] = 8
    path = write_config(tmp_path / "run.yaml", data)
    message = config_error(path)
    assert "teacher.chunk_size" in message


@pytest.mark.parametrize(("thinking", "total"), [(2048, 2048), (4000, 2048)])
def test_thinking_budget_must_be_below_total_budget(config_file: Path, thinking: int, total: int) -> None:
    message = config_error(config_file, f"guards.max_thinking_tokens={thinking}", f"guards.max_total_tokens={total}")
    assert "max_thinking_tokens" in message
    assert "max_total_tokens" in message


def test_thinking_budget_below_total_is_accepted(config_file: Path) -> None:
    config = load_config(config_file, ["guards.max_thinking_tokens=2047", "guards.max_total_tokens=2048"])
    assert config.guards.max_thinking_tokens == 2047


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("teacher.chunk_tokens=0", "teacher.chunk_tokens"),
        ("teacher.chunk_tokens=many", "teacher.chunk_tokens"),
        ("mode=teacher-first", "mode"),
        ("student.responses=[]", "student.responses"),
        ("student.backend=vllm", "student.backend"),
        ("student.sampling.top_p=1.5", "student.sampling.top_p"),
        ("max_in_flight=0", "max_in_flight"),
        ("limit=0", "limit"),
        ("student.latency_s=-1", "student.latency_s"),
    ],
)
def test_invalid_values_are_rejected_naming_the_key_path(config_file: Path, override: str, path: str) -> None:
    assert f"{path}:" in config_error(config_file, override)


@pytest.mark.parametrize("mode", [m.value for m in Mode])
def test_every_mode_is_accepted(config_file: Path, mode: str) -> None:
    assert load_config(config_file, [f"mode={mode}"]).mode.value == mode


def test_predictor_shorthand(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["student"]["predictor"] = "lexicon"
    config = load_config(write_config(tmp_path / "run.yaml", data), ["teacher.predictor=lexicon"])
    assert config.student.predictor == LexiconPredictorConfig()
    assert config.teacher.predictor == LexiconPredictorConfig()
    # The shorthand and the long form are the same config.
    assert config.config_hash() == load_config(write_config(tmp_path / "long.yaml")).config_hash()


def test_predictor_long_form(config_file: Path) -> None:
    config = load_config(
        config_file, ["student.predictor={type: lexicon, phrases: [honestly], replace_defaults: true}"]
    )
    assert config.student.predictor.phrases == ("honestly",)
    assert config.student.predictor.replace_defaults is True


def test_unknown_predictor_is_rejected(config_file: Path) -> None:
    assert "student.predictor" in config_error(config_file, "student.predictor=telepathy")


# -- paths -------------------------------------------------------------------------------------


def test_paths_in_the_file_are_relative_to_its_directory(
    tmp_path: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(config_file, ["student.predictor.phrases_file=../phrases.txt"])
    cfg_dir = config_file.resolve().parent
    assert config.data.input == cfg_dir / "prompts.jsonl"
    assert config.data.output == cfg_dir / "out.jsonl"
    assert config.student.predictor.phrases_file is not None
    assert config.student.predictor.phrases_file.resolve() == tmp_path.resolve() / "phrases.txt"


def test_absolute_paths_are_kept(tmp_path: Path, config_file: Path) -> None:
    target = tmp_path / "data" / "in.jsonl"
    config = load_config(config_file, [f"data.input={target}"])
    assert config.data.input == target


def test_relative_config_path_resolves_against_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path / "cfg" / "run.yaml")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("cfg/run.yaml"))
    assert config.data.input == (tmp_path / "cfg" / "prompts.jsonl").resolve()
    assert config.data.input is not None
    assert config.data.input.is_absolute()


# -- the config hash ---------------------------------------------------------------------------


def test_hash_is_stable(config_file: Path) -> None:
    h = hash_of(config_file)
    assert h == hash_of(config_file)
    assert isinstance(h, str)
    assert len(h) >= 8
    # The same config spelled as a dict gives the same hash.
    assert load_config(data=copy.deepcopy(BASE)).config_hash() == h


def test_hash_is_the_same_in_another_process(config_file: Path) -> None:
    code = "import sys; from pathlib import Path; from tessy import load_config; print(load_config(Path(sys.argv[1])).config_hash())"
    out = subprocess.run(
        [sys.executable, "-c", code, str(config_file)], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == hash_of(config_file)


def test_hash_does_not_depend_on_key_order_in_the_file(tmp_path: Path) -> None:
    reordered = {k: BASE[k] for k in reversed(list(BASE))}
    reordered["student"] = {k: BASE["student"][k] for k in reversed(list(BASE["student"]))}
    a = write_config(tmp_path / "a.yaml")
    b = write_config(tmp_path / "b.yaml", reordered)
    assert hash_of(a) == hash_of(b)


@pytest.mark.parametrize(
    "override",
    [
        "teacher.chunk_tokens=8",
        "student.chunk_tokens=21",
        "mode=teacher-only",
        "mode=tessy-teacher-answer",
        "student.sampling.temperature=0.6",
        "teacher.sampling.top_p=0.95",
        "teacher.sampling.seed=1",
        "student.responses=[' Hmm']",
        "teacher.responses=[' 1 + 1 = 2.\n</think>']",
        "student.answers=['Done.']",
        "teacher.answers=['Done.']",
        "teacher.format=deepseek-r1",
        "student.system_prompt=Think step by step.",
        "student.predictor.phrases=[honestly]",
        "student.predictor.lookahead=0",
        "guards.max_total_tokens=4096",
        "guards.repetition=false",
        "streaming=true",
    ],
)
def test_hash_changes_with_what_changes_the_data(config_file: Path, override: str) -> None:
    assert hash_of(config_file, override) != hash_of(config_file)


@pytest.mark.parametrize(
    "override",
    [
        "data.input=/elsewhere/prompts.jsonl",
        "data.output=/elsewhere/out.jsonl",
        "data.strict=true",
        "data.retry_failed=true",
        "data.allow_config_change=true",
        "data.fsync=true",
        "max_in_flight=3",
        "limit=10",
        "teacher.max_concurrency=2",
        "student.max_concurrency=5",
        "student.latency_s=0.5",
        "teacher.latency_s=0.01",
        "teacher.predictor.lookahead=null",
    ],
)
def test_hash_does_not_change_with_what_does_not_change_the_data(config_file: Path, override: str) -> None:
    assert hash_of(config_file, override) == hash_of(config_file)


def test_an_unset_lexicon_lookahead_stays_out_of_the_hash_so_older_configs_keep_theirs(config_file: Path) -> None:
    from tessy.config.hashing import _hashed

    config = load_config(config_file)
    assert "lookahead" not in _hashed(config)["teacher"]["predictor"]
    assert (
        _hashed(load_config(config_file, ["teacher.predictor.lookahead=2"]))["teacher"]["predictor"]["lookahead"] == 2
    )


def test_hash_does_not_depend_on_where_the_config_file_is(tmp_path: Path) -> None:
    a = write_config(tmp_path / "a" / "run.yaml")
    b = write_config(tmp_path / "b" / "deeper" / "other.yaml")
    assert hash_of(a) == hash_of(b)


def test_phrases_file_content_not_path_enters_the_hash(tmp_path: Path) -> None:
    def config_with_phrases(directory: Path, name: str, content: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(content, encoding="utf-8")
        data = copy.deepcopy(BASE)
        data["student"]["predictor"] = {"type": "lexicon", "phrases_file": name}
        return write_config(directory / "run.yaml", data)

    a = config_with_phrases(tmp_path / "a", "style.txt", "honestly\nby the way\n")
    b = config_with_phrases(tmp_path / "b", "other-name.txt", "honestly\nby the way\n")
    c = config_with_phrases(tmp_path / "c", "style.txt", "honestly\n")
    assert hash_of(a) == hash_of(b)  # same content, another path and name
    assert hash_of(a) != hash_of(c)  # other content
    before = hash_of(a)
    (tmp_path / "a" / "style.txt").write_text("honestly\nby the way\nanyway\n", encoding="utf-8")
    assert hash_of(a) != before  # the file's content changed under the same path
    assert hash_of(a) != hash_of(write_config(tmp_path / "d" / "run.yaml"))  # a file vs none


def test_dump_round_trips_to_the_same_hash(config_file: Path) -> None:
    config = load_config(config_file, ["teacher.chunk_tokens=9", "mode=teacher-answer"])
    dumped = json.loads(json.dumps(config.dump()))
    assert load_config(data=dumped).config_hash() == config.config_hash()


def test_a_config_loads_from_a_path_given_as_text_and_resolves_paths_beside_it(config_file: Path) -> None:
    config = load_config(str(config_file))
    assert config == load_config(config_file)
    assert config.data.output == config_file.parent / "out.jsonl"


def test_a_config_loads_from_a_dict_with_paths_relative_to_a_given_folder(tmp_path: Path) -> None:
    config = load_config(copy.deepcopy(BASE), base_dir=tmp_path)
    assert config.data.input == tmp_path / "prompts.jsonl"
    assert load_config(copy.deepcopy(BASE)).data.input == Path("prompts.jsonl")


def test_overrides_may_be_a_mapping_of_dotted_keys_whose_values_are_taken_as_they_are(config_file: Path) -> None:
    config = load_config(config_file, {"teacher.chunk_tokens": 7, "student.system_prompt": "yes"})
    assert config.teacher.chunk_tokens == 7
    assert config.student.system_prompt == "yes"  # a string, not YAML's true
    assert load_config(config, ["mode=teacher-only"]).mode is Mode.TEACHER_ONLY  # a config, overridden


def test_a_config_file_that_is_not_utf8_is_a_readable_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("mode: tessy\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
