"""Cases found by fuzzing and by the bad-input suite, kept as regression tests, plus a small property test
of the same documented behaviour the fuzzer checks (benchmarks/fuzz_inputs.py runs it for minutes):

  loaders return rows or raise InputError, never another exception;
  checkers return a bool and never raise; a parseable answer equals itself.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from codepmp.errors import InputError
from codepmp.reasoning import answers, gsm8k

REPO = Path(__file__).resolve().parents[2]


def _fuzz_module():
    # The benchmark script is not a package; load it by path so the property test uses the fuzzer's own
    # strategies and checks, and the two cannot drift apart.
    spec = importlib.util.spec_from_file_location("fuzz_inputs", REPO / "benchmarks" / "fuzz_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZ = _fuzz_module()


def _gsm8k_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "gsm8k" / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------- GSM8K loader (found by test_bad_input.py)
# Before the fix it parsed lines itself: a missing 'question' escaped as a bare KeyError, invalid UTF-8 as a
# UnicodeDecodeError, a non-string field was accepted, and messages named the split instead of the file.

@pytest.mark.parametrize("content,must_say", [
    (b'{"answer": "#### 3"}\n', "'question'"),
    (b'{"question": "q", "answer": "#### 3"}\n\xff\n', "UTF-8"),
    (b'{"question": 5, "answer": "#### 3"}\n', "'question'"),
    (b'{"question": "q", "answer": ["#### 3"]}\n', "'answer'"),
    (b'{"question": "q", "answer": ""}\n', "line 1"),
    (b'{"question": "q", "answer": "#### 3"}\n"just a string"\n', "line 2"),
    (b'{"question": "q", "answer": "#### 3", "id": {"a": 1}}\n', "'id'"),
])
def test_gsm8k_bad_rows_are_input_errors_naming_the_file(tmp_path: Path, content: bytes, must_say: str):
    path = _gsm8k_file(tmp_path, content)
    with pytest.raises(InputError) as info:
        gsm8k.load_problems(str(tmp_path), "train")
    assert str(path) in str(info.value) and must_say in str(info.value)


def test_gsm8k_good_rows_and_packaged_sample_still_load(tmp_path: Path):
    _gsm8k_file(tmp_path, b'{"question": "q", "answer": "a <<1+2=3>>3\\n#### 3", "id": 7}\n\n'
                          b'{"question": "r", "answer": "#### 1,000"}\n')
    problems = gsm8k.load_problems(str(tmp_path), "train")
    assert [(p.id, p.answer, p.solution) for p in problems] == [("7", "3", "a 3\n#### 3"), ("train-3", "1000",
                                                                                              "#### 1,000")]
    packaged = gsm8k.load_problems("", "train")  # the sample in the package: 256 problems, each with an answer
    assert len(packaged) == 256 and len({p.id for p in packaged}) == 256 and all(p.answer for p in packaged)


# ---------------------------------------------------------------- answer checkers (found by the fuzzer)

def test_math_equal_reflexive_on_a_lone_brace():
    # Fuzz case ['', '{']: boxing '{' by hand gives an unbalanced box, which is no answer; the bare '{' read
    # as a box's content is an answer and must equal itself.
    assert answers.math_equal("{", "{") is True
    assert answers.math_equal("\\boxed{{}", "{") is False


def test_math_equal_on_a_parse_that_times_out_returns_in_bounded_time():
    # Fuzz case: math-verify timed out parsing '\\boxed{COM1}'. The result comes within the parse and verify
    # timeouts, never as an exception; equal strings are equal whether math-verify or the string fallback decides.
    start = time.monotonic()
    result = answers.math_equal("COM1", "COM1")
    assert result is True
    assert time.monotonic() - start < 4 * answers.MATH_TIMEOUT_S + 5


# Digits are 1-based ('0' names no option), letters run A.. (Z is the 26th), out of range is no answer.
@pytest.mark.parametrize("text,n,index", [("", 0, None), ("Answer: (0)", 4, None), ("answer is 99", 3, None),
                                          ("\x00", 26, None), ("(Z)", 26, 25), ("option 10", 10, 9)])
def test_option_index_edge_cases(text: str, n: int, index: int | None):
    assert answers.option_index(text, n) == index


# ---------------------------------------------------------------- properties, small budget

@pytest.mark.parametrize("target", sorted(FUZZ.TARGETS))
def test_fuzz_property_small_budget(target: str):
    strategy, check = FUZZ.TARGETS[target]
    examples = 5 if target == "math_equal" else 15  # math-verify parses are slow; seconds, not minutes

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(args):
        check(*args)

    run()


def test_fuzz_script_writes_failing_inputs(tmp_path: Path, monkeypatch):
    # The script's own bookkeeping: a check that always fails must be counted and its input written out.
    def always_fails(*args):
        raise AssertionError("planted")

    monkeypatch.setitem(FUZZ.TARGETS, "planted", (FUZZ.TARGETS["gsm8k_equal"][0], always_fails))
    tried, failures = FUZZ.fuzz("planted", 0.5, tmp_path)
    assert tried >= 1 and failures
    written = json.loads(next(tmp_path.glob("planted-*.json")).read_text())
    assert written["target"] == "planted" and "planted" in written["error"]
