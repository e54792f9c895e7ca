"""GSM8K reasoning pairs: reference solutions (chosen) against corrupted ones with a wrong answer (rejected).

The corruption changes one computed number and every later use of the final answer, so a rejected solution
reads fluently but is wrong; correctness is always decided by the final answer, never by the label we meant.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from codepmp.errors import InputError
from codepmp.reasoning.jsonl import Record, read_jsonl
from codepmp.pairs import Pair

PROMPT = "Instruction:{question}\n\nResponse:"
CALC = re.compile(r"<<[^>]*>>")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class Problem:
    id: str
    question: str
    solution: str
    """Reference reasoning without the <<calc>> annotations, ending in '#### <answer>'."""
    answer: str


def normalize_number(text: str) -> str | None:
    match = NUMBER.findall(text.replace("$", ""))
    if not match:
        return None
    value = match[-1].replace(",", "")
    try:
        number = float(value)
    except ValueError:
        return None
    return str(int(number)) if number.is_integer() else str(number)


def final_answer(solution: str) -> str | None:
    """The number after '####', or else the last number in the text, normalized ('1,000.0' -> '1000')."""
    tail = solution.rsplit("####", 1)[1] if "####" in solution else solution
    return normalize_number(tail)


def load_problems(data_dir: str, split: str) -> list[Problem]:
    """Read `gsm8k/{split}.jsonl` from data_dir, or the packaged MIT sample when data_dir is empty. A bad line is
    an InputError naming the file and line (read through the strict JSONL reader, like every other format)."""
    if data_dir:
        path = Path(data_dir) / "gsm8k" / f"{split}.jsonl"
        if not path.exists():
            raise InputError(f"GSM8K file '{path}' does not exist (reasoning.data_dir={data_dir!r})")
        return _problems(read_jsonl(path, "GSM8K"), split)
    with resources.as_file(packaged_path(split)) as path:
        return _problems(read_jsonl(path, "GSM8K"), split)


def packaged_path(split: str):
    """The packaged MIT sample of `split` ('train' or 'dev'), as an importlib resource."""
    return resources.files("codepmp.reasoning").joinpath(f"data/gsm8k_{split}.jsonl")


def _problems(records: list[Record], split: str) -> list[Problem]:
    problems = []
    for record in records:
        solution = CALC.sub("", record.get("answer", str))
        answer = final_answer(solution)
        if answer is None:
            raise record.fail("no final answer after '####' (nor any number) in 'answer'")
        problem_id = record.get("id", (int, str), optional=True)
        problems.append(Problem(str(problem_id if problem_id is not None else f"{split}-{record.position}"),
                                record.get("question", str), solution, answer))
    return problems


def _wrong_value(answer: str, rng: random.Random) -> str:
    value = float(answer)
    candidates = [value + d for d in (1, -1, 2, 10, -10)] + [value * 2, value * 3]
    if value and value % 2 == 0:
        candidates.append(value / 2)
    choice = rng.choice([c for c in candidates if c != value and c >= 0] or [value + 1])
    return str(int(choice)) if float(choice).is_integer() else f"{choice:.2f}"


def corrupt(problem: Problem, rng: random.Random) -> str:
    """A fluent solution with a wrong final answer: one step's result changed, carried into the answer."""
    body, _, _ = problem.solution.rpartition("####")
    lines = body.rstrip("\n").split("\n")
    wrong = _wrong_value(problem.answer, rng)
    steps = [i for i, line in enumerate(lines) if NUMBER.search(line)]
    if len(steps) > 1 and rng.random() < 0.5:
        # Corrupt an intermediate step's last number (an arithmetic slip) ...
        i = rng.choice(steps[:-1])
        spans = list(NUMBER.finditer(lines[i]))
        span = spans[-1]
        slip = _wrong_value(normalize_number(span.group()) or "0", rng)
        lines[i] = lines[i][: span.start()] + slip + lines[i][span.end():]
    if steps:
        # ... and the final step's result, so the stated answer agrees with the written work.
        last = steps[-1]
        spans = [m for m in NUMBER.finditer(lines[last]) if normalize_number(m.group()) == problem.answer]
        if spans:
            span = spans[-1]
            lines[last] = lines[last][: span.start()] + wrong + lines[last][span.end():]
    return "\n".join(lines) + f"\n#### {wrong}"


def prompt(question: str) -> str:
    return PROMPT.format(question=question)


def training_pairs(problems: list[Problem], rejected_per_problem: int, seed: int) -> list[Pair]:
    rng = random.Random(seed)
    return [Pair(prompt(p.question), " " + p.solution, " " + corrupt(p, rng))
            for p in problems for _ in range(rejected_per_problem)]
