"""The command line's own behaviour: help, verbosity, the config schema, paths taken verbatim."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tessy.cli import main, parser
from tessy.config import describe_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _subparsers(p):
    for action in p._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            yield from action.choices.items()


def _all_commands(p, prefix=""):
    for name, sub in _subparsers(p):
        yield f"{prefix}{name}", sub
        yield from _all_commands(sub, f"{prefix}{name} ")


def test_every_option_with_a_default_says_it_in_its_help(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping inside a default such as tessy-demo
    missing = []
    for name, sub in _all_commands(parser()):
        text = sub.format_help()
        for action in sub._actions:
            default = action.default
            if not action.option_strings or default is None or default is False or default in ([], "==SUPPRESS=="):
                continue
            if action.dest in ("help", "verbose"):
                continue
            if f"default: {default}" not in " ".join(text.split()):
                missing.append(f"tessy {name} {action.option_strings[0]} (default {default!r})")
    assert not missing, missing


def test_every_option_has_help():
    bare = [
        f"tessy {name} {a.option_strings[0]}"
        for name, sub in _all_commands(parser())
        for a in sub._actions
        if a.option_strings and not a.help
    ]
    assert not bare, bare


@pytest.mark.parametrize("argv", [["-v", "config", "schema"], ["config", "schema", "-v"], ["config", "-vv", "schema"]])
def test_verbose_is_taken_before_or_after_the_command(argv: list[str], monkeypatch: pytest.MonkeyPatch):
    levels: list[int] = []
    monkeypatch.setattr("tessy.cli.setup_logging", lambda v: levels.append(v))
    assert main(argv) == 0
    assert levels and levels[0] == argv.count("-v") + 2 * argv.count("-vv")


def test_config_schema_lists_every_field_with_type_default_and_description(capsys: pytest.CaptureFixture[str]):
    docs = {d.key: d for d in describe_config()}
    assert docs["ROLE.chunk_tokens"].default == "20" and docs["ROLE.chunk_tokens"].type == "int"
    assert docs["ROLE.endpoints"].only_for == "backend: openai" and docs["ROLE.endpoints"].default == "(required)"
    assert docs["ROLE.predictor.threshold"].only_for == "type: classifier"
    assert docs["guards.max_total_tokens"].default == "32768"
    assert not docs["data.output"].hashed and docs["mode"].hashed
    assert all(d.description for d in docs.values() if d.type != "section"), [
        k for k, d in docs.items() if not d.description
    ]
    assert main(["config", "schema"]) == 0
    out = capsys.readouterr().out
    for key in ("ROLE.sampling.top_p", "guards.max_thinking_tokens", "data.retry_failed", "list[str]"):
        assert key in out


def test_config_schema_as_json_is_the_pydantic_schema(capsys: pytest.CaptureFixture[str]):
    assert main(["config", "schema", "--json"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "teacher" in schema["properties"] and "guards" in schema["properties"]


def test_config_show_prints_the_resolved_config_and_its_hash(capsys: pytest.CaptureFixture[str]):
    assert main(["config", "show", "--config", str(EXAMPLES / "offline.yaml"), "teacher.chunk_tokens=7"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["teacher"]["chunk_tokens"] == 7 and len(shown["config_hash"]) == 16


def test_an_output_path_is_taken_verbatim_even_with_yaml_syntax_in_it(tmp_path: Path):
    out = tmp_path / "runs" / "exp #2: try.jsonl"
    assert main(["synth", "--config", str(EXAMPLES / "offline.yaml"), "--output", str(out)]) == 0
    assert out.is_file() and out.read_text().count("\n") >= 1
    assert not (tmp_path / "runs" / "exp").exists()


def test_library_code_configures_no_logging():
    import tessy  # noqa: F401

    assert not logging.getLogger("tessy").handlers
