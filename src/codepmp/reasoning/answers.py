"""Answer checking for reasoning data: is a model's solution right, judged only by its final answer?

Public API:
    gsm8k_answer(text) -> str | None          canonical final number of a GSM8K solution or answer
    gsm8k_equal(predicted, gold) -> bool      same final number (commas, units, trailing zeros ignored)
    last_boxed(text) -> str | None            content of the last \\boxed{...} or \\fbox{...}
    boxed_span(text) -> (start, end) | None   where that content sits in `text`
    math_answer(text) -> str | None           a MATH solution's final answer, canonical where it parses
    math_equal(predicted, gold) -> bool       mathematically equal final answers (math-verify + sympy)
    option_index(text, n_options) -> int | None   the 0-based option a logic answer picks
    option_letter(index) -> str               0 -> "A"
    extract_answer(domain, text, n_options) -> str | None   the answer a pool row records, by domain
    is_correct(domain, text, gold, n_options) -> bool       the checker of `domain` ("gsm8k", "math", "logic")

Every checker answers False for text it cannot read, never raises on model output: a sampled solution that is
gibberish is simply a wrong solution.
"""

from __future__ import annotations

import functools
import re
import signal
import threading
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation

DOMAINS = ("gsm8k", "math", "logic")

MATH_TIMEOUT_S = 5
"""CPU seconds math-verify may spend parsing one answer or comparing one answer pair before the answer counts
as wrong. CPU time of this process, not wall time (math-verify's own alarm), so that a label does not depend
on how busy the machine was: with the alarm, re-checking 80 shipped MATH samples on a loaded machine disagreed
with 3 of their labels (timeouts; one was the gold `\\boxed{255}`, whose parse also paid for math-verify's
imports)."""

_NUMBER = re.compile(r"(?P<sign>[-\u2212]?)(?P<body>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)")
_ANSWER_IS = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*:?", re.IGNORECASE)


def _numbers(text: str) -> list[Decimal]:
    """Every number in `text`, in order; a minus sign counts only where it cannot be a subtraction."""
    text = text.replace("$", "")
    values = []
    for match in _NUMBER.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        negative = bool(match["sign"]) and not (before.isalnum() or before in ").")
        try:
            value = Decimal(match["body"].replace(",", ""))
        except InvalidOperation:
            continue
        values.append(-value if negative else value)
    return values


def _canonical(value: Decimal) -> str:
    """'18.00' -> '18', '.50' -> '0.5', '1E+3' -> '1000', '-0' -> '0'."""
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def gsm8k_answer(text: str) -> str | None:
    """The final number of a GSM8K-style solution, canonical ('1,000.00' -> '1000', '$-5' -> '-5').

    Where it looks, in order: the first number after the last '####'; else the first number after the last
    'The answer is' / 'Answer:'; else the last number in the text. The first number after a marker (not the
    last) because sampled solutions often ramble on after stating their answer."""
    if "####" in text:
        found = _numbers(text.rsplit("####", 1)[1])
        return _canonical(found[0]) if found else None
    markers = list(_ANSWER_IS.finditer(text))
    if markers:
        found = _numbers(text[markers[-1].end():])
        if found:
            return _canonical(found[0])
    found = _numbers(text)
    return _canonical(found[-1]) if found else None


def gsm8k_equal(predicted: str, gold: str) -> bool:
    """Whether a solution (or bare answer) ends in the same number as the gold answer or reference solution.
    Units and currency are ignored ('$18', '18 dollars', '18%' all read 18), as are commas and trailing zeros."""
    mine, theirs = gsm8k_answer(predicted), gsm8k_answer(gold)
    return mine is not None and theirs is not None and Decimal(mine) == Decimal(theirs)


_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_BARE_BOX = re.compile(r"[^\s$]+")


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the '}' closing the '{' just before `start`; escaped braces (\\{ set notation) do not count."""
    depth, i = 1, start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return i
        i += 1
    return None


def boxed_span(text: str) -> tuple[int, int] | None:
    """Start and end offsets of the content of the last `\\boxed{...}` or `\\fbox{...}` whose braces close.
    MATH also writes `\\boxed 2` without braces: then the content runs to the next space or '$'."""
    for match in reversed(list(_BOX.finditer(text))):
        if text[match.end():match.end() + 1] == "{":
            end = _closing_brace(text, match.end() + 1)
            if end is not None:
                return match.end() + 1, end
        elif match.end() > match.start() + len(match.group().rstrip()):
            bare = _BARE_BOX.match(text, match.end())
            if bare:
                return bare.start(), bare.start() + len(bare.group().rstrip(".,"))
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` or `\\fbox{...}`, nested braces matched (the MATH convention for
    the final answer); None when there is none or its braces never close."""
    span = boxed_span(text)
    return None if span is None else text[span[0]:span[1]].strip()


def _timeout() -> int | None:
    """The CPU budget in this thread: signals reach only the main thread, so elsewhere there is none (None), and
    callers that check in threads accept that a pathological expression can stall them."""
    return MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


class _OverBudget(BaseException):
    """Raised by the profiling timer; a BaseException, so math-verify's own `except Exception` does not swallow it."""


def _over_budget(signum, frame):
    raise _OverBudget


@functools.cache
def _warm_math_verify() -> None:
    # The first parse imports latex2sympy, sympy's printers and the ANTLR tables: seconds of CPU that would
    # otherwise count against the first answer's budget.
    from math_verify import parse, verify

    verify(parse("$\\boxed{\\frac{1}{2}}$", parsing_timeout=None), parse("$0.5$", parsing_timeout=None),
           timeout_seconds=None)


@contextmanager
def _cpu_budget(seconds: float | None):
    """Raise _OverBudget once this process has spent `seconds` of CPU inside the block (none: no limit, or where
    the signal is refused, e.g. in a sub-interpreter)."""
    _warm_math_verify()
    try:
        previous = signal.signal(signal.SIGPROF, _over_budget) if seconds else None
    except ValueError:
        seconds = None
    if not seconds:
        yield
        return
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def _parse(text: str, timeout: int | None) -> list:
    from math_verify import parse
    from math_verify.errors import TimeoutException

    try:
        with _cpu_budget(timeout):
            return parse(text, parsing_timeout=None)
    except (Exception, TimeoutException, _OverBudget):
        return []


@functools.lru_cache(maxsize=8192)
def _parse_answer(answer: str, timeout: int | None) -> tuple:
    """A bare answer parsed as the content of a box, so math-verify reads all of it as one expression."""
    return tuple(_parse(f"$\\boxed{{{answer}}}$", timeout)) if answer.strip() else ()


_PROSE = re.compile(r"(?<!\\)\b[A-Za-z]{2,}\s+[A-Za-z]{2,}\b")
MAX_BARE_ANSWER_CHARS = 200


def _looks_bare(text: str) -> bool:
    """A bare answer ('[1, 3)', '\\dfrac12') rather than prose: math-verify's text extraction misreads those
    ('[1, 3)' as 3), so they are parsed as the content of a box instead."""
    text = text.strip()
    return (len(text) <= MAX_BARE_ANSWER_CHARS and "$" not in text and "\n" not in text
            and not _PROSE.search(text))


def _parse_solution(text: str, timeout: int | None) -> tuple:
    boxed = last_boxed(text)
    if boxed is not None:
        return _parse_answer(boxed, timeout)
    if _looks_bare(text):
        return _parse_answer(text.strip(), timeout) or tuple(_parse(text, timeout))
    return tuple(_parse(text, timeout))


def _verify(gold: tuple, predicted: tuple, timeout: int | None) -> bool:
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        with _cpu_budget(timeout):
            return bool(verify(list(gold), list(predicted), timeout_seconds=None))
    except (Exception, TimeoutException, _OverBudget):
        return False


def math_equal(predicted: str, gold: str) -> bool:
    """Whether a MATH solution (or bare answer) has the gold answer, compared as mathematics by math-verify:
    '\\frac{1}{2}' == '0.5' == '\\dfrac12', '2\\sqrt{3}' == '\\sqrt{12}', '(x+1)^2' == 'x^2+2x+1', intervals and
    sets by value. The predicted answer is the last box, else what math-verify finds ('the final answer is
    ...', the last expression). `gold` is a bare answer or a reference solution (its last box is used).
    A parse failure or a parse or comparison over its CPU budget (MATH_TIMEOUT_S) is False."""
    timeout = _timeout()
    gold_answer = last_boxed(gold)
    parsed_gold = _parse_answer(gold_answer if gold_answer is not None else gold.strip(), timeout)
    parsed = _parse_solution(predicted, timeout)
    return bool(parsed_gold and parsed) and _verify(parsed_gold, parsed, timeout)


def math_answer(text: str) -> str | None:
    """A MATH solution's final answer as a string that equal answers share where math-verify parses them
    ('\\frac12' and '0.5' both give '1/2'), so majority voting groups them; else the raw boxed text."""
    parsed = _parse_solution(text, _timeout())
    if parsed and not isinstance(parsed[0], str):
        return str(parsed[0])
    boxed = last_boxed(text)
    return boxed if boxed is not None else (parsed[-1] if parsed else None)


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TOKEN = r"(?:[\(\[]\s*(?P<wrapped>[A-Za-z]|\d{1,2})\s*[\)\]]|(?P<bare>[A-Za-z]|\d{1,2})(?P<end>[.):;,]|\s|$))"
_MARKER = re.compile(r"\b(?:answer|choice|option)\b\s*(?:is|:|=)?\s*:?\s*(?:(?:option|choice)\b\s*)?" + _TOKEN,
                     re.IGNORECASE)
_LEADING = re.compile(r"\s*" + _TOKEN)


def option_letter(index: int) -> str:
    return _LETTERS[index]


def _token_index(match: re.Match, n_options: int) -> int | None:
    token = match["wrapped"] or match["bare"]
    index = int(token) - 1 if token.isdigit() else _LETTERS.index(token.upper())
    return index if 0 <= index < n_options else None


def _after_marker(match: re.Match, n_options: int) -> int | None:
    """A lowercase letter followed by a space is a word ('the answer is a bit unclear'), not an option."""
    if match["bare"] and match["bare"].islower() and match["end"].isspace():
        return None
    return _token_index(match, n_options)


def _leading(text: str, n_options: int) -> int | None:
    """An option token opening the answer: the whole text ('B', '(b)', '2'), a bracketed token ('(B) since
    ...') or a letter with punctuation ('C. The passage ...'); a leading '1.' stays a numbered list."""
    match = _LEADING.match(text)
    if match is None:
        return None
    whole = match.end() == len(text) or not text[match.end():].strip()
    punctuated = bool(match["bare"]) and match["bare"].isalpha() and match["end"] in tuple(".):;,")
    return _token_index(match, n_options) if whole or match["wrapped"] or punctuated else None


def option_index(text: str, n_options: int) -> int | None:
    """The 0-based index of the option a logic answer picks, or None when it names none (or one out of range).

    Convention: options are letters A, B, C, ... (case-insensitive) or 1-based digits ('2' is the second
    option, index 1). Read, in order: the last 'answer is C' / 'Answer: (b)' / 'option 2' / 'choice D' marker
    that names an option; else an option token opening the text ('B', '(b)', 'C.', '(2)')."""
    for match in reversed(list(_MARKER.finditer(text))):
        index = _after_marker(match, n_options)
        if index is not None:
            return index
    return _leading(text, n_options)


def extract_answer(domain: str, text: str, n_options: int = 0) -> str | None:
    """The final answer of `text` as a pool row records it (majority voting groups by it): a canonical number
    (gsm8k), a canonical expression (math) or an option letter (logic)."""
    _check_domain(domain)
    if domain == "gsm8k":
        return gsm8k_answer(text)
    if domain == "math":
        return math_answer(text)
    index = option_index(text, n_options)
    return None if index is None else option_letter(index)


def is_correct(domain: str, text: str, gold: str, n_options: int = 0) -> bool:
    """Whether `text` reaches `gold` under the checker of `domain`; for logic, `gold` is the option letter."""
    _check_domain(domain)
    if domain == "gsm8k":
        return gsm8k_equal(text, gold)
    if domain == "math":
        return math_equal(text, gold)
    index = option_index(text, n_options)
    return index is not None and option_letter(index) == gold.strip().upper()


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown reasoning domain '{domain}' (known: {', '.join(DOMAINS)})")
