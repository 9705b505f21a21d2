"""Benchmark sources read with their verification fields: each preset on rows in the source's
own shape, the fields it gives run by the tests they describe, and ``data.preset`` in a config."""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from pathlib import Path
from typing import Any

import pytest

from tessy import load_config
from tessy.errors import ConfigError
from tessy.prompts import BadLine, PromptSource, iter_samples, read_prompts
from tessy.records import Sample

ROOT = Path(__file__).resolve().parents[1]

GSM8K = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips to her "
        "friends in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {"question": "A farm has 1,200 hens and buys 400 more. How many hens?", "answer": "1200+400=1600\n#### 1,600"},
    {"question": "No final line here.", "answer": "It is 3."},
]
MATH = [
    {  # hendrycks MATH: the answer is the solution's last \boxed{}
        "problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
        "level": "Level 1",
        "type": "Prealgebra",
        "solution": "We have $\\frac{1}{2} = \\frac{2}{4}$, so the sum is $\\boxed{\\frac{3}{4}}$.",
    },
    {  # MATH-500: an answer field and a unique_id
        "problem": "Compute $\\sqrt{16}$.",
        "solution": "Since $4^2 = 16$, $\\sqrt{16} = \\boxed{4}$.",
        "answer": "4",
        "subject": "Algebra",
        "level": 1,
        "unique_id": "test/algebra/1.json",
    },
]
HUMANEVAL = {
    "task_id": "HumanEval/0",
    "prompt": 'from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n    """ Check if in given list of numbers, are any two numbers closer to each other than\n    given threshold.\n    """\n',
    "canonical_solution": "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n            if idx != idx2:\n                distance = abs(elem - elem2)\n                if distance < threshold:\n                    return True\n\n    return False\n",
    "test": "\n\nMETADATA = {'author': 'jt', 'dataset': 'test'}\n\n\ndef check(candidate):\n    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == False\n",
    "entry_point": "has_close_elements",
}
MBPP = [
    {  # the full MBPP
        "task_id": 2,
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res) ",
        "test_list": [
            "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
            "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {  # sanitized MBPP
        "source_file": "Benchmark Questions Verification V2.ipynb",
        "task_id": 3,
        "prompt": "Write a python function to identify non-prime numbers.",
        "code": "import math\ndef is_not_prime(n):\n    if n == 1:\n        return True\n    for i in range(2,int(math.sqrt(n)) + 1):\n        if n % i == 0:\n            return True\n    return False",
        "test_imports": ["import math"],
        "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True"],
    },
]


def lite_compressed(cases: list[dict[str, str]]) -> str:
    """code_generation_lite's private test cases: base64 of zlib of a pickled JSON text."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


LCB_STDIN = {
    "question_title": "A - Sum",
    "question_content": "Given A and B, print A+B.",
    "platform": "atcoder",
    "question_id": "abc999_a",
    "contest_id": "abc999",
    "contest_date": "2024-08-03T00:00:00",
    "starter_code": "",
    "difficulty": "easy",
    "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
    "private_test_cases": lite_compressed([{"input": "5 7\n", "output": "12\n", "testtype": "stdin"}]),
    "metadata": "{}",
}
LCB_FUNCTIONAL = {
    "question_title": "two-sum-target",
    "question_content": "Return the sum of nums plus k.",
    "platform": "leetcode",
    "question_id": "3456",
    "contest_id": "weekly-contest-400",
    "contest_date": "2024-06-02T00:00:00",
    "starter_code": "class Solution:\n    def addAll(self, nums: List[int], k: int) -> int:\n        ",
    "difficulty": "easy",
    "public_test_cases": json.dumps([{"input": "[1, 2, 3]\n4", "output": "10", "testtype": "functional"}]),
    "private_test_cases": lite_compressed([{"input": "[]\n0", "output": "0", "testtype": "functional"}]),
    "metadata": json.dumps({"func_name": "addAll"}),
}


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read(path: Path, preset: str, **fields: str) -> list[Sample | BadLine]:
    return list(read_prompts(PromptSource(str(path), preset=preset, fields=tuple(fields.items()))))


def passes(program: str, test: str, entry_point: str) -> bool:
    """What a HumanEval-style verifier does with the fields (trusted fixture code only)."""
    namespace: dict[str, Any] = {}
    exec(f"{program}\n{test}\ncheck({entry_point})\n", namespace)
    return True


def test_gsm8k_answers_are_the_number_after_the_hashes(tmp_path: Path) -> None:
    first, second, bad = read(jsonl(tmp_path / "gsm8k.jsonl", GSM8K), "gsm8k")
    assert isinstance(first, Sample) and isinstance(second, Sample)
    assert first.messages == [{"role": "user", "content": GSM8K[0]["question"]}]
    assert first.fields == {"answer": "72", "solution": GSM8K[0]["answer"]}
    assert second.fields["answer"] == "1600"
    assert isinstance(bad, BadLine) and "#### ANSWER" in bad.error


def test_math_answers_come_from_the_answer_field_or_the_last_boxed(tmp_path: Path) -> None:
    hendrycks, math500 = read(jsonl(tmp_path / "math.jsonl", MATH), "math")
    assert isinstance(hendrycks, Sample) and isinstance(math500, Sample)
    assert hendrycks.fields["answer"] == "\\frac{3}{4}" and hendrycks.messages[0]["content"] == MATH[0]["problem"]
    assert math500.id == "test/algebra/1.json" and math500.fields["answer"] == "4"
    assert "unique_id" not in math500.fields and math500.fields["subject"] == "Algebra"


def test_humaneval_keeps_test_and_entry_point_and_they_check_the_canonical_solution(tmp_path: Path) -> None:
    (sample,) = read(jsonl(tmp_path / "he.jsonl", [HUMANEVAL]), "humaneval")
    assert isinstance(sample, Sample) and sample.id == "HumanEval/0"
    assert "```python\nfrom typing import List" in sample.messages[0]["content"]
    f = sample.fields
    assert f["entry_point"] == "has_close_elements" and f["test"] == HUMANEVAL["test"]
    assert passes(HUMANEVAL["prompt"] + HUMANEVAL["canonical_solution"], f["test"], f["entry_point"])


def test_mbpp_asserts_become_a_check_function_in_both_of_its_shapes(tmp_path: Path) -> None:
    full, sanitized = read(jsonl(tmp_path / "mbpp.jsonl", MBPP), "mbpp")
    assert isinstance(full, Sample) and isinstance(sanitized, Sample)
    assert full.id == "2" and full.fields["entry_point"] == "similar_elements"
    assert full.messages[0]["content"].endswith("\n".join(MBPP[0]["test_list"]))
    assert sanitized.fields["entry_point"] == "is_not_prime"
    assert sanitized.fields["test"].startswith("import math\n\ndef check(candidate):\n")
    for sample, row in ((full, MBPP[0]), (sanitized, MBPP[1])):
        assert passes(row["code"], sample.fields["test"], sample.fields["entry_point"])
        with pytest.raises((AssertionError, TypeError)):  # and a wrong program fails them
            wrong = f"{row['code']}\n\ndef {sample.fields['entry_point']}(*args):\n    return None\n"
            passes(wrong, sample.fields["test"], sample.fields["entry_point"])


def test_livecodebench_stdin_tests_become_inputs_and_outputs(tmp_path: Path) -> None:
    (sample,) = read(jsonl(tmp_path / "lcb.jsonl", [LCB_STDIN]), "livecodebench")
    assert isinstance(sample, Sample) and sample.id == "abc999_a"
    assert sample.fields["inputs"] == ["1 2\n", "5 7\n"] and sample.fields["outputs"] == ["3\n", "12\n"]
    assert "public_test_cases" not in sample.fields and "private_test_cases" not in sample.fields
    assert "standard input" in sample.messages[0]["content"]


def test_livecodebench_functional_tests_check_the_solution_method(tmp_path: Path) -> None:
    (sample,) = read(jsonl(tmp_path / "lcb.jsonl", [LCB_FUNCTIONAL]), "livecodebench")
    assert isinstance(sample, Sample) and sample.fields["entry_point"] == "Solution().addAll"
    solution = "from typing import List\nclass Solution:\n    def addAll(self, nums: List[int], k: int) -> int:\n        return sum(nums) + k\n"
    assert passes(solution, sample.fields["test"], sample.fields["entry_point"])


def test_compressed_test_cases_are_read_without_running_pickled_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> Any:
            return (print, ("pwned",))

    row = dict(LCB_STDIN, private_test_cases=base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode())
    (bad,) = read(jsonl(tmp_path / "lcb.jsonl", [row]), "livecodebench")
    assert isinstance(bad, BadLine) and "refusing to load builtins.print" in bad.error


def test_fields_rename_after_the_preset_and_in_memory_rows_take_a_preset(tmp_path: Path) -> None:
    rows = [{"question": "What is 1+1?", "answer": "1+1=2\n#### 2"}]
    (sample,) = read(jsonl(tmp_path / "g.jsonl", rows), "gsm8k", reference="answer")
    assert isinstance(sample, Sample) and sample.fields == {"reference": "2", "solution": rows[0]["answer"]}
    (in_memory,) = iter_samples(rows, preset="gsm8k")
    assert isinstance(in_memory, Sample) and in_memory.fields["answer"] == "2"
    with pytest.raises(ConfigError, match="unknown data preset"):
        list(iter_samples(rows, preset="aime"))


def test_data_preset_in_a_config(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "gsm8k.jsonl", GSM8K[:1])
    config = load_config(ROOT / "examples" / "offline.yaml", [f"data.input={path}", "data.preset=gsm8k"])
    source = config.data.source()
    assert source is not None and source.preset == "gsm8k"
    (sample,) = read_prompts(source)
    assert isinstance(sample, Sample) and sample.fields["answer"] == "72"
    with pytest.raises(Exception, match="preset"):
        load_config(ROOT / "examples" / "offline.yaml", ["data.preset=aime"])


def test_a_synthesis_given_rows_in_memory_reads_them_with_the_configs_preset(tmp_path: Path) -> None:
    import tessy

    config = load_config(ROOT / "examples" / "offline.yaml", ["data.preset=gsm8k"])
    summary = tessy.synthesize(config, prompts=list(GSM8K[:1]), output=tmp_path / "out.jsonl")
    assert summary.written == 1
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert record["answer"] == "72"


def test_a_preset_changes_the_config_hash_only_when_set() -> None:
    base = load_config(ROOT / "examples" / "offline.yaml")
    moved = load_config(ROOT / "examples" / "offline.yaml", ["data.input=elsewhere.jsonl"])
    preset = load_config(ROOT / "examples" / "offline.yaml", ["data.preset=humaneval"])
    assert base.config_hash() == moved.config_hash() != preset.config_hash()
