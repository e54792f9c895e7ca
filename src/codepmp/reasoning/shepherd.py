"""Math-Shepherd: step-labelled solutions to GSM8K and MATH questions, read as correct and incorrect solutions.

Public API:
    ShepherdSolution(text, step_labels, correct, line)
    ShepherdProblem(id, question, task, solutions)
    read_shepherd(path) -> list[ShepherdProblem]      solutions grouped by (task, question), file order kept
    shepherd_pairs(problems, max_pairs_per_problem, seed) -> list[Pair]

Format (the Hugging Face release): one object a line with `input` (the question, then 'Step 1: ...' steps each
ending in the tag 'ки'), `label` (the same text with each tag replaced by '+' or '-') and `task` ('GSM8K' or
'MATH'). A solution is correct when every step is '+'. The '<<calc>>' annotations of GSM8K steps are removed,
as for the GSM8K references, so they cannot tell the solutions apart.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from codepmp.reasoning.gsm8k import CALC, prompt
from codepmp.reasoning.jsonl import Record, read_jsonl
from codepmp.reasoning.pairing import pair_up
from codepmp.pairs import Pair

STEP_TAG = "ки"
FIRST_STEP = "Step 1:"


@dataclass(frozen=True)
class ShepherdSolution:
    text: str
    """The steps, one a line, without tags."""
    step_labels: tuple[bool, ...]
    correct: bool
    line: int


@dataclass
class ShepherdProblem:
    id: str
    question: str
    task: str
    solutions: list[ShepherdSolution]


def _step_labels(record: Record, segments: list[str], label: str) -> tuple[bool, ...]:
    """The '+'/'-' the label puts where the input has each tag; any other difference is an error."""
    labels, pos = [], 0
    for step, segment in enumerate(segments[:-1], 1):
        if label[pos:pos + len(segment)] != segment:
            raise record.fail(f"'label' differs from 'input' before the tag of step {step}")
        tag = label[pos + len(segment):pos + len(segment) + 1]
        if tag not in ("+", "-"):
            raise record.fail(f"'label' has {tag!r} where step {step} needs '+' or '-'")
        labels.append(tag == "+")
        pos += len(segment) + 1
    if label[pos:] != segments[-1]:
        raise record.fail("'label' differs from 'input' after the last step")
    return tuple(labels)


def _parse(record: Record) -> tuple[str, str, ShepherdSolution]:
    text, label = record.get("input", str), record.get("label", str)
    segments = text.split(STEP_TAG)
    if len(segments) < 2:
        raise record.fail(f"'input' has no step tag '{STEP_TAG}'")
    start = segments[0].find(FIRST_STEP)
    if start < 0:
        raise record.fail(f"'input' has no '{FIRST_STEP}' separating the question from the solution")
    steps = [segments[0][start:]] + segments[1:-1]
    tail = segments[-1].strip()
    solution = "\n".join(CALC.sub("", s).strip() for s in steps + ([tail] if tail else []))
    labels = _step_labels(record, segments, label)
    return segments[0][:start].strip(), record.get("task", str), ShepherdSolution(solution, labels, all(labels),
                                                                                    record.position)


def read_shepherd(path: str | Path) -> list[ShepherdProblem]:
    problems: dict[tuple[str, str], ShepherdProblem] = {}
    for record in read_jsonl(path, "Math-Shepherd"):
        question, task, solution = _parse(record)
        key = (task, question)
        if key not in problems:
            problems[key] = ShepherdProblem(f"{Path(path).stem}-{record.position}", question, task, [])
        problems[key].solutions.append(solution)
    return list(problems.values())


def shepherd_pairs(problems: Sequence[ShepherdProblem], max_pairs_per_problem: int, seed: int) -> list[Pair]:
    """Correct (chosen) against incorrect (rejected) solutions of the same question, at most
    `max_pairs_per_problem` a question, seeded; questions with only one kind of solution give none."""
    rng = random.Random(seed)
    pairs = []
    for problem in problems:
        pairs += pair_up(prompt(problem.question), [s.text for s in problem.solutions if s.correct],
                         [s.text for s in problem.solutions if not s.correct], max_pairs_per_problem, rng)
    return pairs
