"""Reward-model metrics: pairwise accuracy and best-of-N selection against random, majority and oracle."""

from __future__ import annotations

import random
from collections import Counter, defaultdict


def pairwise_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """Fraction of pairs where the chosen response scores strictly higher (ties count as wrong)."""
    if not chosen or len(chosen) != len(rejected):
        raise ValueError("pairwise_accuracy needs equally many (>0) chosen and rejected scores")
    return sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)


def best_of_n(pool: list[dict], scores: list[float], n_values: list[int], trials: int, seed: int) -> dict:
    """Accuracy of picking one candidate from N drawn per problem, averaged over problems and trials.

    `pool` rows carry problem_id, answer and correct; `scores` are the reward model's, aligned with pool.
    Strategies: rm (top score), random (uniform pick), majority (most frequent final answer, RM score breaks
    ties), oracle (any correct candidate among the N).
    """
    by_problem: dict[str, list[tuple[dict, float]]] = defaultdict(list)
    for row, score in zip(pool, scores):
        by_problem[row["problem_id"]].append((row, score))
    rng = random.Random(seed)
    results = {}
    for n in n_values:
        totals = Counter()
        count = 0
        for candidates in by_problem.values():
            if n > len(candidates):
                raise ValueError(f"best-of-{n} needs at least {n} candidates per problem, pool has {len(candidates)}")
            for _ in range(trials):
                drawn = rng.sample(candidates, n)
                totals["rm"] += max(drawn, key=lambda c: c[1])[0]["correct"]
                totals["random"] += sum(c[0]["correct"] for c in drawn) / n
                votes = Counter(c[0]["answer"] for c in drawn)
                top = max(drawn, key=lambda c: (votes[c[0]["answer"]], c[1]))
                totals["majority"] += top[0]["correct"]
                totals["oracle"] += any(c[0]["correct"] for c in drawn)
                count += 1
        results[n] = {k: totals[k] / count for k in ("rm", "random", "majority", "oracle")}
    return results
