"""Every shipped example config loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessy import load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_validate(path):
    config = load_config(path)
    assert config.teacher.backend and config.student.backend
