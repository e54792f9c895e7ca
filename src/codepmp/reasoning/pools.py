"""Best-of-N candidate pools: rows shaped like `gsm8k.candidate_pool`'s, plus the domain.

Public API:
    generated_pool(tasks, backend, sampling, n) -> list[dict]     n sampled candidates per task, checked
    labelled_pool(tasks, solutions, labels) -> list[dict]         rows for solutions already sampled and checked
    imported_pool(path, domain, tasks=None) -> list[dict]         candidates with labels from a JSONL file

Row: problem_id, candidate (0-based within the problem), prompt, response (' ' + text), answer (the final
answer as `answers.extract_answer` reads it, for majority voting), gold (None if unknown), correct, domain.

Imported file: one object a line, {"problem_id": str, "prompt": str, "gold": str, "candidates": [{"text": str,
"is_correct": bool}, ...]}. `prompt` and `gold` may be left out when `tasks` has the problem (its prompt and
gold are used then). The file's `is_correct` labels are kept as given: they may come from a stricter grader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from codepmp.reasoning.answers import DOMAINS, extract_answer
from codepmp.reasoning.jsonl import Record, read_jsonl
from codepmp.reasoning.sampled import label_solutions, sample_solutions
from codepmp.reasoning.tasks import Task, response
from codepmp.generate.backend import Backend, Sampling

DEFAULT_OPTIONS = 4
"""Options assumed for an imported logic problem that no task describes (LogiQA and ReClor have 4)."""


def _row(problem_id: str, k: int, prompt: str, text: str, gold: str | None, correct: bool, domain: str,
         n_options: int) -> dict:
    return {"problem_id": problem_id, "candidate": k, "prompt": prompt, "response": response(text),
            "answer": extract_answer(domain, text, n_options), "gold": gold, "correct": correct, "domain": domain}


def generated_pool(tasks: Sequence[Task], backend: Backend, sampling: Sampling, n: int) -> list[dict]:
    """n candidates per task from the policy (see `sampled.sample_solutions`), each labelled by its checker."""
    solutions = sample_solutions(tasks, backend, sampling, n, desc="candidate pool")
    return labelled_pool(tasks, solutions, label_solutions(tasks, solutions))


def labelled_pool(tasks: Sequence[Task], solutions: Sequence[Sequence[str]],
                  labels: Sequence[Sequence[bool]]) -> list[dict]:
    """Pool rows of sampled solutions with their labels (`sampled.label_solutions`), so the same samples can
    also make dev pairs without being checked twice."""
    return [_row(task.id, k, task.prompt, text, task.gold, ok, task.domain, task.n_options)
            for task, texts, marks in zip(tasks, solutions, labels, strict=True)
            for k, (text, ok) in enumerate(zip(texts, marks, strict=True))]


def _candidates(record: Record) -> list[tuple[str, bool]]:
    items = record.get("candidates", list)
    if not items:
        raise record.fail("'candidates' is empty")
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) \
                or not isinstance(item.get("is_correct"), bool):
            raise record.fail(f"candidates[{k}] must be an object with 'text' (string) and 'is_correct' (bool)")
        out.append((item["text"], item["is_correct"]))
    return out


def imported_pool(path: str | Path, domain: str, tasks: Sequence[Task] | None = None) -> list[dict]:
    """The candidates of a JSONL file as pool rows of `domain` ('gsm8k', 'math' or 'logic'); a problem may
    appear on one line only."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown reasoning domain '{domain}' (known: {', '.join(DOMAINS)})")
    by_id = {t.id: t for t in tasks or ()}
    seen: dict[str, str] = {}
    rows = []
    for record in read_jsonl(path, "candidate pool"):
        problem_id = record.get("problem_id", str)
        if problem_id in seen:
            raise record.fail(f"problem '{problem_id}' already given at {seen[problem_id]}")
        seen[problem_id] = record.where
        task = by_id.get(problem_id)
        prompt = record.get("prompt", str, optional=True) or (task.prompt if task else None)
        if prompt is None:
            raise record.fail(f"no 'prompt' for problem '{problem_id}', and no task gives it")
        gold = record.get("gold", str, optional=True) or (task.gold if task else None)
        n_options = task.n_options if task else DEFAULT_OPTIONS
        rows += [_row(problem_id, k, prompt, text, gold, ok, domain, n_options)
                 for k, (text, ok) in enumerate(_candidates(record))]
    return rows
