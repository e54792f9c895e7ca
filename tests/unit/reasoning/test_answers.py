import threading
import time

import math_verify
import pytest
from math_verify.errors import TimeoutException

from codepmp.reasoning import answers
from codepmp.reasoning.answers import (
    extract_answer,
    gsm8k_answer,
    gsm8k_equal,
    is_correct,
    last_boxed,
    math_answer,
    math_equal,
    option_index,
)


@pytest.mark.parametrize("text, expected", [
    ("She pays 3 * 6 = 18 dollars.\n#### 18", "18"),
    ("#### 1,000", "1000"),
    ("#### $1,234,567.50", "1234567.5"),
    ("#### 18.00", "18"),
    ("#### -7", "-7"),
    ("#### \u22123", "-3"),
    ("so she lost money.\n#### $-12", "-12"),
    ("The answer is $18.", "18"),
    ("The answer is: 72 clips. Then 5 more questions follow", "72"),
    ("Final answer: 0.50", "0.5"),
    ("It comes to .5 of the cake", "0.5"),
    ("He has 10 - 3 = 7 apples left", "7"),
    ("The discount is 18%", "18"),
    ("It costs 18 dollars", "18"),
    ("no number at all", None),
])
def test_gsm8k_answer(text, expected):
    assert gsm8k_answer(text) == expected


@pytest.mark.parametrize("predicted, gold", [
    ("#### 1,000", "1000"),
    ("$18", "18"),
    ("18 dollars", "#### 18"),
    ("18%", "18"),
    ("18.00", "18"),
    ("0.50", ".5"),
    ("The answer is -4.", "-4"),
    ("First 2 + 3 = 5, then 5 * 2 = 10. The answer is 10 apples.", "Natalia sold 10 in May.\n#### 10"),
])
def test_gsm8k_equal(predicted, gold):
    assert gsm8k_equal(predicted, gold)


@pytest.mark.parametrize("predicted, gold", [
    ("-5", "5"), ("18.01", "18"), ("#### 100", "10"), ("no answer", "3"), ("3", "no gold"),
])
def test_gsm8k_not_equal(predicted, gold):
    assert not gsm8k_equal(predicted, gold)


@pytest.mark.parametrize("text, expected", [
    (r"So $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"\boxed{1} first, then \fbox{x^{2}+\{1\}}", r"x^{2}+\{1\}"),
    (r"our answer is $\boxed 2$.", "2"),
    (r"\boxed {7}", "7"),
    (r"\boxed{open", None),
    ("no box here", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("predicted, gold", [
    ("0.5", r"\frac{1}{2}"),
    (r"\dfrac12", r"\frac{1}{2}"),
    (r"The final answer is $\boxed{\tfrac{3}{4}}$.", "0.75"),
    (r"\sqrt{12}", r"2\sqrt{3}"),
    (r"\frac{1}{2}\sqrt{3}", r"\frac{\sqrt{3}}{2}"),
    ("(x+1)^2", "x^2+2x+1"),
    (r"[1, 3)", r"[1,3)"),
    (r"(-\infty,-4)\cup(-4,\infty)", r"(-\infty, -4) \cup (-4, \infty)"),
    (r"\{2, 1\}", r"\{1,2\}"),
    ("x = 5", "5"),
    (r"10\%", "10"),
    (r"90^\circ", "90"),
    (r"\text{(C)}", "C"),
    ("We add them up. So the answer is $\\boxed{6}$.", "Adding, $1+2+3=\\boxed{6}$."),
])
def test_math_equal(predicted, gold):
    assert math_equal(predicted, gold)


@pytest.mark.parametrize("predicted, gold", [
    ("3", "4"),
    (r"\frac{1}{3}", "0.33"),
    (r"[1,3]", r"[1,3)"),
    (r"\sqrt{2}", "2"),
    ("x^2-1", "(x+1)^2"),
    (r"\boxed{\text{Monday}}", r"\text{Sunday}"),
    ("gibberish without maths", "3"),
    ("", "3"),
    ("3", ""),
])
def test_math_not_equal(predicted, gold):
    assert not math_equal(predicted, gold)


@pytest.mark.parametrize("text", [r"\boxed{\frac{", "}}}{{{\\", r"\boxed{\sqrt[}", "\\left( \\right", "$$$"])
def test_math_equal_is_false_not_an_error_on_broken_latex(text):
    assert math_equal(text, "1") is False
    assert math_equal("1", text) is False


def test_math_parse_timeout_counts_as_not_equal(monkeypatch):
    def slow(*args, **kwargs):
        raise TimeoutException("parse took too long")

    answers._parse_answer.cache_clear()
    monkeypatch.setattr(math_verify, "parse", slow)
    assert math_equal("0.5", r"\frac{1}{2}") is False
    answers._parse_answer.cache_clear()


def test_math_verify_timeout_counts_as_not_equal(monkeypatch):
    def slow(*args, **kwargs):
        raise TimeoutException("comparison took too long")

    monkeypatch.setattr(math_verify, "verify", slow)
    assert math_equal("0.5", r"\frac{1}{2}") is False


def test_math_equal_outside_the_main_thread_runs_without_signals():
    results = []
    worker = threading.Thread(target=lambda: results.append((math_equal("0.5", r"\frac{1}{2}"),
                                                              math_equal("0.5", "2"))))
    worker.start()
    worker.join()
    assert results == [(True, False)]


def test_math_equal_runs_without_a_budget_where_signals_are_refused(monkeypatch):
    def refuse(*args):
        raise ValueError("signal only works in main thread of the main interpreter")

    answers._parse_answer.cache_clear()
    monkeypatch.setattr(answers.signal, "signal", refuse)
    assert math_equal("0.5", r"\frac{1}{2}") is True
    assert math_equal("0.5", "2") is False
    answers._parse_answer.cache_clear()


def _slowed_parse(monkeypatch, wait):
    """math-verify's parse, after `wait()`; with a 0.3 s CPU budget."""
    real_parse = math_verify.parse
    answers._warm_math_verify()
    answers._parse_answer.cache_clear()
    monkeypatch.setattr(answers, "MATH_TIMEOUT_S", 0.3)

    def parse(*args, **kwargs):
        wait()
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(math_verify, "parse", parse)


def test_math_budget_is_cpu_time_so_a_busy_machine_does_not_change_the_label(monkeypatch):
    _slowed_parse(monkeypatch, lambda: time.sleep(0.6))  # wall time passes, as on a loaded machine; no CPU spent
    assert math_equal("0.5", r"\frac{1}{2}") is True
    answers._parse_answer.cache_clear()


def test_math_parse_over_its_cpu_budget_is_stopped_and_counts_as_not_equal(monkeypatch):
    def spin():
        end = time.process_time() + 3.0
        while time.process_time() < end:
            pass

    _slowed_parse(monkeypatch, spin)
    start = time.process_time()
    assert math_equal("0.5", r"\frac{1}{2}") is False
    assert time.process_time() - start < 2.0  # each parse was stopped at its 0.3 s budget, not run for 3 s
    answers._parse_answer.cache_clear()


def test_math_answer_groups_equal_answers():
    assert math_answer(r"so \boxed{\frac12}") == math_answer(r"\boxed{0.5}") == math_answer(r"\boxed{\dfrac{1}{2}}")
    assert math_answer("nothing to read") is None


@pytest.mark.parametrize("text, expected", [
    ("B", 1),
    ("(b)", 1),
    ("c.", 2),
    ("Answer: C", 2),
    ("answer: c", 2),
    ("The correct answer is (D).", 3),
    ("Answer: Option C", 2),
    ("option 2", 1),
    ("2", 1),
    ("(4)", 3),
    ("The answer is option 1, since the passage says so.", 0),
    ("Looking at the options, A seems weak, so the answer is B", 1),
    ("C. The passage says so.", 2),
    ("(A) because both premises hold", 0),
    ("The answer is a bit unclear", None),
    ("A cat sat on the mat", None),
    ("1. First, note the premise", None),
    ("E", None),
    ("5", None),
    ("0", None),
    ("", None),
])
def test_option_index(text, expected):
    assert option_index(text, 4) == expected


def test_domain_dispatch():
    assert is_correct("gsm8k", "#### 1,000", "1000")
    assert is_correct("math", r"\boxed{0.5}", r"\frac{1}{2}")
    assert is_correct("logic", "The answer is (b).", "B", 4)
    assert not is_correct("logic", "The answer is C.", "B", 4)
    assert extract_answer("logic", "answer: d", 4) == "D"
    assert extract_answer("gsm8k", "#### 3.50") == "3.5"
    with pytest.raises(ValueError, match="unknown reasoning domain 'chess'"):
        is_correct("chess", "e4", "e4")
