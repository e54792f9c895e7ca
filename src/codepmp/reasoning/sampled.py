"""Preference pairs from a policy's own solutions: sample k per problem, label each by its final answer, pair
correct (chosen) with incorrect (rejected) ones of the same problem.

Public API:
    sample_solutions(tasks, backend, sampling, k) -> list[list[str]]     k texts per task, in task order
    label_solutions(tasks, solutions) -> list[list[bool]]                each text checked against its gold
    pair_solutions(tasks, solutions, labels, max_pairs_per_problem, seed) -> (list[Pair], SampleStats)
    sampled_pairs(tasks, backend, sampling, k, max_pairs_per_problem, seed) -> (list[Pair], SampleStats)

Tasks come from `tasks.gsm8k_tasks`, `math.math_tasks` or `logic.logic_tasks`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from codepmp.reasoning.pairing import pair_up
from codepmp.reasoning.tasks import Task
from codepmp.generate.backend import Backend, Sampling
from codepmp.pairs import Pair


@dataclass
class SampleStats:
    problems: int = 0
    samples: int = 0
    correct_samples: int = 0
    no_correct: int = 0
    """Problems where no sample was right (too hard for the policy): no pair."""
    no_incorrect: int = 0
    """Problems where every sample was right (too easy), or the wrong ones were blank: no pair."""
    paired: int = 0
    """Problems with both kinds, so with at least one pair; paired + no_correct + no_incorrect == problems."""
    pairs: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sample_solutions(tasks: Sequence[Task], backend: Backend, sampling: Sampling, k: int,
                     desc: str = "sample solutions") -> list[list[str]]:
    """k solutions per task from one `generate` call over every prompt repeated k times.

    No per-copy seeds are needed: the transformers backend samples each row of a batch independently, and
    the vLLM and OpenAI backends seed each prompt with `sampling.seed + its index`, so the k copies differ
    whenever `sampling.temperature > 0` (at 0 they are k copies of the greedy solution)."""
    if k < 1:
        raise ValueError(f"samples per problem must be at least 1, got {k}")
    texts = backend.generate([t.prompt for t in tasks for _ in range(k)], sampling, desc=desc)
    return [texts[i * k:(i + 1) * k] for i in range(len(tasks))]


def label_solutions(tasks: Sequence[Task], solutions: Sequence[Sequence[str]]) -> list[list[bool]]:
    if len(tasks) != len(solutions):
        raise ValueError(f"{len(tasks)} tasks but solutions for {len(solutions)}")
    return [[task.check(text) for text in texts] for task, texts in zip(tasks, solutions)]


def pair_solutions(tasks: Sequence[Task], solutions: Sequence[Sequence[str]], labels: Sequence[Sequence[bool]],
                   max_pairs_per_problem: int, seed: int) -> tuple[list[Pair], SampleStats]:
    """Correct against incorrect solutions of each task (see `pairing.pair_up`), seeded, with the counts that
    say where pairs could not be made."""
    rng = random.Random(seed)
    stats, pairs = SampleStats(problems=len(tasks)), []
    for task, texts, marks in zip(tasks, solutions, labels, strict=True):
        good = [t for t, ok in zip(texts, marks, strict=True) if ok and t.strip()]
        bad = [t for t, ok in zip(texts, marks) if not ok and t.strip()]
        stats.samples += len(texts)
        stats.correct_samples += len(good)
        if not good:
            stats.no_correct += 1
        elif not bad:
            stats.no_incorrect += 1
        else:
            stats.paired += 1
            pairs += pair_up(task.prompt, good, bad, max_pairs_per_problem, rng)
    stats.pairs = len(pairs)
    return pairs, stats


def sampled_pairs(tasks: Sequence[Task], backend: Backend, sampling: Sampling, k: int, max_pairs_per_problem: int,
                  seed: int) -> tuple[list[Pair], SampleStats]:
    """Sample, label and pair in one call; generation is seeded by `sampling.seed`, pairing by `seed`."""
    solutions = sample_solutions(tasks, backend, sampling, k)
    return pair_solutions(tasks, solutions, label_solutions(tasks, solutions), max_pairs_per_problem, seed)
