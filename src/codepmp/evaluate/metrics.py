"""Reward-model metrics: pairwise and option accuracy, best-of-N selection against random, majority and oracle,
and percentile-bootstrap confidence intervals for all of them.

Best-of-N protocol (`best_of_n_curves`): for each N, `trials` seeded draws of N distinct candidates per problem;
each strategy picks one candidate of the draw and scores 1 if it is correct. A problem's value is its mean over
the draws, the reported accuracy the mean over problems, and its interval a bootstrap over problems (the draws
are the noise of the protocol, the problems the noise of the benchmark). Scores come in precomputed, one per
candidate, so the model runs once and every N reuses the same scores.

Strategies:
- rm: the drawn candidate with the highest score (equal scores: the earlier drawn, i.e. a random one).
- majority: the most frequent final answer among the drawn candidates that have one (a candidate whose answer
  is None abstains); answers tied on votes are decided by the highest single RM score among their candidates
  (max, not sum: a sum would re-count votes). With no answer at all it falls back to the rm pick.
- random: a uniform pick, counted by its expectation (the correct fraction of the draw) rather than sampled.
- oracle: 1 if any drawn candidate is correct, the ceiling for any selector.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np

STRATEGIES = ("rm", "random", "majority", "oracle")
_BOOTSTRAP_CHUNK = 1 << 22


def pairwise_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """Fraction of pairs where the chosen response scores strictly higher (ties count as wrong)."""
    return sum(pairwise_correct(chosen, rejected)) / len(chosen)


def pairwise_correct(chosen: list[float], rejected: list[float]) -> list[float]:
    """Per-pair 1.0/0.0 of `pairwise_accuracy`, the unit a bootstrap resamples."""
    if not chosen or len(chosen) != len(rejected):
        raise ValueError("pairwise_accuracy needs equally many (>0) chosen and rejected scores")
    return [float(c > r) for c, r in zip(chosen, rejected)]


def option_correct(option_scores: list[list[float]], gold: list[int]) -> list[float]:
    """Per-question 1.0 when the gold option alone has the top score; a shared top score is 0.0, since a
    reward model that cannot separate the options has not chosen the right one."""
    if not option_scores or len(option_scores) != len(gold):
        raise ValueError("option accuracy needs one gold index per (non-empty) list of option scores")
    correct = []
    for number, (scores, answer) in enumerate(zip(option_scores, gold)):
        if not 0 <= answer < len(scores):
            raise ValueError(f"question {number}: gold option {answer} is not among its {len(scores)} options")
        top = max(scores)
        correct.append(float(scores[answer] == top and scores.count(top) == 1))
    return correct


def option_accuracy(option_scores: list[list[float]], gold: list[int]) -> float:
    """Fraction of multiple-choice questions (logic) whose gold option has the strictly highest score."""
    correct = option_correct(option_scores, gold)
    return sum(correct) / len(correct)


def _quantiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


def _resampled_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `n_resamples` with-replacement resamples, drawn in chunks so memory stays bounded."""
    rng = np.random.default_rng(seed)
    size = len(values)
    per_chunk = max(1, _BOOTSTRAP_CHUNK // size)
    means = []
    for start in range(0, n_resamples, per_chunk):
        rows = min(per_chunk, n_resamples - start)
        means.append(values[rng.integers(0, size, size=(rows, size))].mean(axis=1))
    return np.concatenate(means)


def _check_bootstrap(values: Sequence[float], n_resamples: int, level: float) -> None:
    if not len(values):
        raise ValueError("a bootstrap needs at least one value")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, not {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, not {level}")


def bootstrap_ci(values: list[float], n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-item values and its percentile-bootstrap interval, so a difference
    between two models can be read against the sampling noise of a small dev set."""
    _check_bootstrap(values, n_resamples, level)
    array = np.asarray(values, dtype=float)
    low, high = _quantiles(_resampled_means(array, n_resamples, seed), level)
    return float(array.mean()), low, high


def paired_difference_ci(a: list[float], b: list[float], n_resamples: int = 1000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high) by a paired bootstrap: each resample draws item indices once for both,
    so the item difficulty both models share cancels and the interval is narrower than two separate ones."""
    if len(a) != len(b):
        raise ValueError(f"a paired difference needs the same items: {len(a)} values against {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    return bootstrap_ci(diffs, n_resamples, seed, level)


def powers_of_two(n_max: int) -> list[int]:
    """1, 2, 4, ... up to `n_max`: the paper's best-of-N grid."""
    if n_max < 1:
        raise ValueError(f"best-of-N needs at least one candidate, not {n_max}")
    return [1 << k for k in range(n_max.bit_length())]


Candidate = tuple[dict, float]


def _group_by_problem(pool: list[dict], scores: list[float]) -> dict[str, list[Candidate]]:
    if len(pool) != len(scores):
        raise ValueError(f"best-of-N needs one score per candidate: {len(pool)} candidates, {len(scores)} scores")
    by_problem: dict[str, list[Candidate]] = defaultdict(list)
    for row, score in zip(pool, scores):
        by_problem[row["problem_id"]].append((row, score))
    return by_problem


def _majority_pick(drawn: list[Candidate]) -> Candidate:
    """The candidate that majority voting returns; see the module docstring for abstention and ties."""
    votes = Counter(c[0]["answer"] for c in drawn if c[0]["answer"] is not None)
    if not votes:
        return max(drawn, key=lambda c: c[1])
    return max((c for c in drawn if c[0]["answer"] is not None), key=lambda c: (votes[c[0]["answer"]], c[1]))


def _draw_outcomes(drawn: list[Candidate]) -> dict[str, float]:
    """Each strategy's correctness (0..1) on one draw."""
    return {
        "rm": float(max(drawn, key=lambda c: c[1])[0]["correct"]),
        "random": sum(bool(c[0]["correct"]) for c in drawn) / len(drawn),
        "majority": float(_majority_pick(drawn)[0]["correct"]),
        "oracle": float(any(c[0]["correct"] for c in drawn)),
    }


def _problem_means(candidates: list[Candidate], n: int, trials: int, rng: random.Random) -> dict[str, float]:
    """Each strategy's mean correctness over `trials` draws of `n` of one problem's candidates."""
    totals: Counter = Counter()
    for _ in range(trials):
        totals.update(_draw_outcomes(rng.sample(candidates, n)))
    return {k: totals[k] / trials for k in STRATEGIES}


def best_of_n(pool: list[dict], scores: list[float], n_values: list[int], trials: int, seed: int) -> dict:
    """{N: {strategy: accuracy}}, averaged over problems and `trials` draws; an N larger than some problem's
    pool is an error here (`best_of_n_curves` skips it instead).

    `pool` rows carry problem_id, answer and correct; `scores` are the reward model's, aligned with pool.
    """
    by_problem = _group_by_problem(pool, scores)
    rng = random.Random(seed)
    results = {}
    for n in n_values:
        per_problem = []
        for candidates in by_problem.values():
            if n > len(candidates):
                raise ValueError(f"best-of-{n} needs at least {n} candidates per problem, pool has {len(candidates)}")
            per_problem.append(_problem_means(candidates, n, trials, rng))
        results[n] = {k: sum(p[k] for p in per_problem) / len(per_problem) for k in STRATEGIES}
    return results


def best_of_n_curves(pool: list[dict], scores: list[float], n_values: list[int] | None = None, trials: int = 16,
                     seed: int = 0, n_resamples: int = 1000, level: float = 0.95) -> dict:
    """Best-of-N accuracy per strategy as curves over N, each point with a bootstrap interval over problems.

    `n_values` defaults to 1, 2, 4, ... up to the smallest pool. Pools may differ in size per problem; an N
    larger than the smallest pool is skipped (listed under "skipped_n") rather than run on the problems that
    have enough candidates, so every point of a curve averages the same problems. Each N draws from its own
    seeded generator, so adding or removing an N leaves the other points unchanged.

    Returns {"n": [...], "skipped_n": [...], "problems": P, "trials": T, "level": L,
    "strategies": {strategy: {"mean": [...], "low": [...], "high": [...]}}} with lists aligned with "n".
    """
    if trials < 1:
        raise ValueError(f"best-of-N needs at least one draw per problem, not {trials}")
    by_problem = _group_by_problem(pool, scores)
    if not by_problem:
        raise ValueError("best-of-N needs a non-empty candidate pool")
    smallest = min(len(c) for c in by_problem.values())
    wanted = powers_of_two(smallest) if n_values is None else sorted(set(n_values))
    if any(n < 1 for n in wanted):
        raise ValueError(f"best-of-N sizes must be at least 1: {wanted}")
    kept = [n for n in wanted if n <= smallest]
    curves = {k: {"mean": [], "low": [], "high": []} for k in STRATEGIES}
    for n in kept:
        rng = random.Random(f"best-of-n:{seed}:{n}")
        per_problem = [_problem_means(c, n, trials, rng) for c in by_problem.values()]
        for strategy, curve in curves.items():
            mean, low, high = bootstrap_ci([p[strategy] for p in per_problem], n_resamples, seed, level)
            curve["mean"].append(mean)
            curve["low"].append(low)
            curve["high"].append(high)
    return {"n": kept, "skipped_n": [n for n in wanted if n > smallest], "problems": len(by_problem),
            "trials": trials, "level": level, "strategies": curves}
