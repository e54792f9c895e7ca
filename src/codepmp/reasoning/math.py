"""MATH (Hendrycks et al.) problems and corrupted-reference pairs.

Public API:
    MathProblem(id, question, solution, answer, subject, level)
    load_math(data_dir, split) -> list[MathProblem]        reads `{data_dir}/math/{split}.jsonl`
    read_math(path) -> list[MathProblem]                   any file of that format
    math_tasks(problems) -> list[Task]                     for sampling and best-of-N pools
    corrupt_math(problem, rng, other_answers=()) -> str | None   the reference with a wrong final box
    math_corrupted_pairs(problems, rejected_per_problem, seed) -> list[Pair]

File format (PRM800K `math_splits`): one JSON object a line with `problem`, `solution` (LaTeX ending in a
`\\boxed{}` answer) and optionally `answer`, `subject`, `level`, `unique_id`; a missing `answer` is the last
box of the solution.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from codepmp.reasoning.answers import boxed_span, last_boxed, math_equal
from codepmp.reasoning.gsm8k import prompt
from codepmp.reasoning.jsonl import read_jsonl
from codepmp.reasoning.tasks import Task, response
from codepmp.pairs import Pair

MAX_WRONG_TRIES = 8
"""Wrong answers tried (each one checked by math-verify) before a problem is left without a corruption."""


@dataclass(frozen=True)
class MathProblem:
    id: str
    question: str
    solution: str
    answer: str
    subject: str = ""
    level: int | None = None


def read_math(path: str | Path) -> list[MathProblem]:
    problems = []
    for record in read_jsonl(path, "MATH"):
        solution = record.get("solution", str)
        answer = record.get("answer", str, optional=True)
        if answer is None:
            answer = last_boxed(solution)
            if answer is None:
                raise record.fail("no 'answer' field and no \\boxed{} answer in 'solution'")
        level = record.get("level", int, optional=True)
        problem_id = record.get("unique_id", str, optional=True) or f"{Path(path).stem}-{record.position}"
        problems.append(MathProblem(problem_id, record.get("problem", str), solution, answer,
                                    record.get("subject", str, optional=True) or "", level))
    return problems


def load_math(data_dir: str | Path, split: str) -> list[MathProblem]:
    return read_math(Path(data_dir) / "math" / f"{split}.jsonl")


def math_tasks(problems: Sequence[MathProblem]) -> list[Task]:
    return [Task(p.id, prompt(p.question), p.answer, "math") for p in problems]


_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CHOICE = re.compile(r"^(?P<pre>\\text\{\s*\(?|\(?)(?P<letter>[A-E])(?P<post>\)?\s*\}?|\)?)$")
_SWAPS = {"even": "odd", "odd": "even", "neither": "even", "yes": "no", "no": "yes",
          "monday": "Tuesday", "tuesday": "Wednesday", "wednesday": "Thursday", "thursday": "Friday",
          "friday": "Saturday", "saturday": "Sunday", "sunday": "Monday"}


def _number_slips(answer: str, rng: random.Random) -> list[str]:
    """The answer with one of its numbers changed: +-1, +2, doubled or +10 (the slips a solver makes)."""
    spans = list(_NUMBER.finditer(answer))
    rng.shuffle(spans)
    out = []
    for span in spans[:2]:
        text = span.group()
        value = float(text) if "." in text else int(text)
        for new in (value + 1, value - 1, value + 2, value * 2, value + 10):
            if new >= 0 and new != value:
                shown = f"{new:g}" if isinstance(new, float) else str(new)
                out.append(answer[:span.start()] + shown + answer[span.end():])
    return out


def _wrong_answers(answer: str, rng: random.Random, other_answers: Sequence[str]) -> list[str]:
    """Candidate wrong answers, most plausible first: a number slip, another choice letter, the opposite word,
    then the answers of other problems."""
    candidates = _number_slips(answer, rng)
    rng.shuffle(candidates)
    choice = _CHOICE.match(answer.strip())
    if choice:
        letters = [c for c in "ABCDE" if c != choice["letter"]]
        candidates.insert(0, choice["pre"] + rng.choice(letters) + choice["post"])
    word = re.fullmatch(r"(\\text\{)?\s*([A-Za-z]+)\s*(\})?", answer.strip())
    if word and word[2].lower() in _SWAPS:
        candidates.insert(0, f"{word[1] or ''}{_SWAPS[word[2].lower()]}{word[3] or ''}")
    picks = rng.sample(range(len(other_answers)), min(len(other_answers), MAX_WRONG_TRIES))
    candidates += [other_answers[i] for i in picks if other_answers[i].strip() != answer.strip()]
    return candidates


def corrupt_math(problem: MathProblem, rng: random.Random, other_answers: Sequence[str] = ()) -> str | None:
    """The reference solution with its last box holding a wrong answer that math-verify confirms is not equal
    to the gold one; None when the solution has no box or no tried answer is surely wrong."""
    span = boxed_span(problem.solution)
    if span is None:
        return None
    for wrong in _wrong_answers(problem.answer, rng, other_answers)[:MAX_WRONG_TRIES]:
        if not math_equal(wrong, problem.answer):
            return problem.solution[:span[0]] + wrong + problem.solution[span[1]:]
    return None


def math_corrupted_pairs(problems: Sequence[MathProblem], rejected_per_problem: int, seed: int) -> list[Pair]:
    """Reference solution (chosen) against corrupted ones (rejected), `rejected_per_problem` per problem,
    seeded. Problems whose solution has no box, or for which no wrong answer could be confirmed, give no pair
    (compare the pair count with len(problems) * rejected_per_problem)."""
    rng = random.Random(seed)
    answers = [p.answer for p in problems]
    pairs = []
    for problem in problems:
        for _ in range(rejected_per_problem):
            rejected = corrupt_math(problem, rng, answers)
            if rejected is not None:
                pairs.append(Pair(prompt(problem.question), response(problem.solution), response(rejected)))
    return pairs
