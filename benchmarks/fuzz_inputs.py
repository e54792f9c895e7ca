"""Fuzz the reasoning data loaders and the answer checkers for a fixed time, asserting only documented behaviour.

    .venv/bin/python benchmarks/fuzz_inputs.py --minutes 3 --out build/fuzz
    .venv/bin/python benchmarks/fuzz_inputs.py --minutes 0.05 --out /tmp/fuzz --derandomize   # make test's smoke run

What counts as a failure:
  * a loader (generic pairs, GSM8K, MATH, LogiQA2.0, ReClor, Math-Shepherd, an imported candidate pool) that
    raises anything but the project's InputError, or returns something that is not a list;
  * a checker (gsm8k_equal, math_equal with its parse/verify timeouts, option_index, is_correct) that raises
    or returns something other than a bool (an int in range or None for option_index);
  * an answer that the checker can parse but that is not equal to itself.

Inputs come from hypothesis: files made of rows with each format's field names and values of any JSON type,
plus raw bytes and text; answers mixing digits, LaTeX and prose. The time is split evenly between the targets
and each runs in rounds of generated examples until its share is spent. Every failing input (after
hypothesis shrinks it) is written to `--out` as JSON, and the script prints cases tried and failures found;
it exits non-zero when something failed. Found cases live on as tests in
tests/reliability/test_fuzz_regressions.py.

atheris (coverage-guided) is not used: version 3.1.0 has no wheel for this Python 3.11 environment and the
older ones build from source against a libFuzzer-enabled clang, which this environment does not have.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codepmp.errors import InputError
from codepmp.reasoning import answers, gsm8k
from codepmp.reasoning.generic import read_preference_pairs
from codepmp.reasoning.logic import read_logiqa2, read_reclor
from codepmp.reasoning.math import read_math
from codepmp.reasoning.pools import imported_pool
from codepmp.reasoning.shepherd import read_shepherd

FIELDS = {
    "pairs": ["prompt", "chosen", "rejected"],
    "gsm8k": ["question", "answer", "id"],
    "math": ["problem", "solution", "answer", "level", "unique_id", "subject"],
    "logiqa2": ["id", "text", "question", "options", "answer", "type"],
    "reclor": ["id_string", "context", "question", "answers", "label"],
    "shepherd": ["input", "label", "task"],
    "pool": ["problem_id", "prompt", "gold", "candidates"],
}

# Text drawn from what these formats hold: numbers, LaTeX, the Math-Shepherd step tag, GSM8K markers.
ALPHABET = st.sampled_from(list("0123456789.,-+*/^=()[]{}\\$ #\nabcxyzABCD") + ["ки", "####", "\\boxed{", "\\frac",
                                                                              "Step 1:", "+", "\u2028", "\x00"])
TEXT = st.one_of(st.text(max_size=40), st.lists(ALPHABET, max_size=30).map("".join))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False), TEXT)
JSON = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                    st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def rows(fmt: str) -> st.SearchStrategy[dict]:
    """Objects with (some of) the format's field names, each holding any JSON value; candidates and options
    lean towards their expected shapes so the deeper checks are reached too."""
    values = {name: JSON for name in FIELDS[fmt]}
    values["candidates"] = st.one_of(JSON, st.lists(st.fixed_dictionaries({"text": JSON, "is_correct": JSON}),
                                                    max_size=3))
    values["options"] = values["answers"] = st.one_of(JSON, st.lists(TEXT, max_size=5))
    return st.fixed_dictionaries({}, optional={name: values[name] for name in FIELDS[fmt]})


def file_bytes(fmt: str) -> st.SearchStrategy[bytes]:
    if fmt == "reclor":
        structured = st.lists(rows(fmt), max_size=4).map(lambda items: json.dumps(items).encode())
    else:
        structured = st.lists(st.one_of(rows(fmt).map(json.dumps), TEXT), max_size=5).map(
            lambda lines: "\n".join(lines).encode())
    return st.one_of(structured, st.binary(max_size=200), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))


def _load(fmt: str, data: bytes) -> object:
    with tempfile.TemporaryDirectory() as tmp:
        if fmt == "gsm8k":
            path = Path(tmp) / "gsm8k" / "train.jsonl"
            path.parent.mkdir()
            path.write_bytes(data)
            return gsm8k.load_problems(tmp, "train")
        path = Path(tmp) / ("reclor.json" if fmt == "reclor" else f"{fmt}.jsonl")
        path.write_bytes(data)
        load: Callable[[Path], object] = {
            "pairs": read_preference_pairs, "math": read_math, "logiqa2": read_logiqa2, "reclor": read_reclor,
            "shepherd": read_shepherd, "pool": lambda p: imported_pool(p, "gsm8k"),
        }[fmt]
        return load(path)


def check_loader(fmt: str, data: bytes) -> None:
    """Documented: rows come back as a list, or an InputError is raised; nothing else."""
    try:
        out = _load(fmt, data)
    except InputError:
        return
    assert isinstance(out, list), f"{fmt} loader returned {type(out).__name__}"


def check_gsm8k(predicted: str, gold: str) -> None:
    result = answers.gsm8k_equal(predicted, gold)
    assert isinstance(result, bool)
    if answers.gsm8k_answer(predicted) is not None:
        assert answers.gsm8k_equal(predicted, predicted), "gsm8k_equal is not reflexive"


def check_math(predicted: str, gold: str) -> None:
    result = answers.math_equal(predicted, gold)
    assert isinstance(result, bool)
    # A bare answer that parses must equal itself: both sides read it as the content of one box. (Boxing it
    # by hand is not the same: '{' would make an unbalanced box, which is no answer at all.)
    if answers._looks_bare(gold) and answers._parse_answer(gold.strip(), answers._timeout()):
        assert answers.math_equal(gold, gold), "math_equal is not reflexive"


def check_options(text: str, n_options: int) -> None:
    index = answers.option_index(text, n_options)
    assert index is None or (isinstance(index, int) and 0 <= index < n_options), f"option_index gave {index!r}"
    letter = answers.extract_answer("logic", text, n_options)
    assert letter is None or isinstance(letter, str)
    assert isinstance(answers.is_correct("logic", text, "A", n_options), bool)


MATH_TEXT = st.one_of(TEXT, st.lists(st.sampled_from(
    ["1", "2", "x", "+", "-", "^", "\\frac{1}{2}", "\\sqrt{", "}", "{", "(", ")", "[", "]", "\\pi", "0.5", "=",
     "\\infty", ",", "\\cup", "\\le", "e", "10^{10}", "!", "\\text{", "%", "\\%", "9" * 30]), max_size=12).map("".join))

TARGETS: dict[str, tuple[st.SearchStrategy, Callable]] = {
    **{f"load_{fmt}": (st.tuples(st.just(fmt), file_bytes(fmt)), check_loader) for fmt in FIELDS},
    "gsm8k_equal": (st.tuples(TEXT, TEXT), check_gsm8k),
    "math_equal": (st.tuples(MATH_TEXT, MATH_TEXT), check_math),
    "option_index": (st.tuples(st.one_of(TEXT, st.text(max_size=60)), st.integers(0, 26)), check_options),
}


def fuzz(name: str, seconds: float, out: Path, derandomize: bool = False) -> tuple[int, list[dict]]:
    """Run one target in rounds until `seconds` pass; return (cases tried, failures with their inputs)."""
    strategy, check = TARGETS[name]
    tried = 0
    failures: list[dict] = []
    last_failing: list = []

    @settings(max_examples=200, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(args):
        nonlocal tried
        tried += 1
        try:
            check(*args)
        except Exception:
            last_failing[:] = [args]
            raise

    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        try:
            run()
        except Exception as exc:  # a failure hypothesis has shrunk; keep it and carry on fuzzing
            args = last_failing[0] if last_failing else None
            case = {"target": name, "input": _jsonable(args), "error": f"{type(exc).__name__}: {exc}"[:2000],
                    "traceback": traceback.format_exc()[-4000:]}
            if not any(f["input"] == case["input"] for f in failures):
                failures.append(case)
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{name}-{len(failures):03d}.json").write_text(json.dumps(case, indent=2))
            if len(failures) >= 20:
                break
    return tried, failures


def _jsonable(args):
    if args is None:
        return None
    return [a.decode("latin-1") if isinstance(a, bytes) else a for a in args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="total fuzzing time, split across targets")
    parser.add_argument("--out", type=Path, default=Path("build/fuzz"), help="folder for failing inputs")
    parser.add_argument("--only", nargs="*", default=None, help="target names to run (default: all)")
    parser.add_argument("--derandomize", action="store_true",
                        help="the same examples on every run: the smoke run in make test must not fail on a "
                             "new input found by chance (fuzzing proper leaves this off)")
    args = parser.parse_args(argv)
    names = args.only or list(TARGETS)
    share = args.minutes * 60 / len(names)
    total_tried = total_failed = 0
    for name in names:
        start = time.monotonic()
        tried, failures = fuzz(name, share, args.out, args.derandomize)
        total_tried += tried
        total_failed += len(failures)
        print(f"{name:<16} {tried:>8} cases  {len(failures):>3} failures  {time.monotonic() - start:6.1f} s",
              flush=True)
        for f in failures:
            print(f"    {f['error'][:200]!r} on {json.dumps(f['input'])[:200]}", flush=True)
    print(f"total            {total_tried:>8} cases  {total_failed:>3} failures  (inputs in {args.out})")
    return 1 if total_failed else 0


if __name__ == "__main__":
    sys.exit(main())
