"""Reward-model metrics: pairwise and option accuracy, best-of-N selection against random, majority and oracle,
and percentile-bootstrap confidence intervals for all of them.

Intervals (`bootstrap_ci`, `paired_difference_ci`) are cluster bootstraps: each resample draws whole clusters
(a math problem, a logic item) with replacement, never single rows, because rows of one cluster are not
independent (the three pairs of a logic item share its passage; the pairs of one math problem share its
question). A resample's statistic is its rows' mean (the sum over the drawn clusters over their row count), so
with singleton clusters this is the ordinary row bootstrap, draw for draw. With `strata` (the domains) the
statistic is the mean over strata of each stratum's mean, every stratum weighing the same however many rows it
has, and each resample draws clusters within each stratum (a stratified bootstrap), so a stratum keeps its own
number of clusters. A paired difference resamples the same clusters for both models (it bootstraps per-row
differences), so the difficulty both models share cancels.

Best-of-N protocol (`best_of_n_compare`, `best_of_n_curves`): for each N and problem, `trials` draws of N
distinct candidates from a generator seeded by (seed, N, problem id); the draws depend on nothing else, so every
model is judged on identical draws and adding an N or a problem leaves the others' draws alone. Each strategy
picks one candidate of a draw and scores 1 if it is correct. A problem's value is its mean over the draws, the
reported accuracy the mean over problems, and its interval a bootstrap over problems (the draws are the noise
of the protocol, the problems the noise of the benchmark); the PMP - control difference of the rm strategy is
paired over problems. Scores come in precomputed, one per candidate, so the model runs once and every N reuses
the same scores.

Strategies:
- rm: the drawn candidate with the highest score (equal scores: the earlier drawn, i.e. a random one).
- majority: the most frequent final answer among the drawn candidates that have one (a candidate whose answer
  is None abstains); answers tied on votes are decided by a draw seeded by (seed, N, problem id), and a draw
  with no answer at all returns a seeded random candidate. It never reads a reward model's scores, so it is
  the same baseline whichever models are evaluated.
- random: a uniform pick, counted by its expectation (the correct fraction of the draw) rather than sampled.
- oracle: 1 if any drawn candidate is correct, the ceiling for any selector.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Hashable, Sequence

import numpy as np

STRATEGIES = ("rm", "random", "majority", "oracle")
BASELINES = ("random", "majority", "oracle")
"""The strategies that read no reward-model score: one value per problem, whichever model is evaluated."""
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


def _check_bootstrap(values: Sequence[float], n_resamples: int, level: float) -> None:
    if not len(values):
        raise ValueError("a bootstrap needs at least one value")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, not {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, not {level}")


def _labels(labels: Sequence[Hashable] | None, size: int, what: str) -> list:
    if labels is None:
        return list(range(size)) if what == "clusters" else [None] * size
    if len(labels) != size:
        raise ValueError(f"{what} must label every value: {len(labels)} labels for {size} values")
    return list(labels)


def cluster_layout(size: int, clusters: Sequence[Hashable] | None = None,
                   strata: Sequence[Hashable] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """(cluster index of each row, per stratum the indices of its clusters), strata and clusters numbered in order
    of first appearance. No `clusters`: every row is its own cluster; no `strata`: one stratum. A cluster is keyed
    by (stratum, cluster), so one that appears in two strata counts as two."""
    keys = list(zip(_labels(strata, size, "strata"), _labels(clusters, size, "clusters")))
    number: dict[tuple, int] = {}
    row_cluster = np.fromiter((number.setdefault(key, len(number)) for key in keys), dtype=np.int64, count=size)
    by_stratum: dict[Hashable, list[int]] = {}
    for (stratum, _), index in number.items():
        by_stratum.setdefault(stratum, []).append(index)
    return row_cluster, [np.asarray(group, dtype=np.int64) for group in by_stratum.values()]


def stratified_mean(values: Sequence[float], strata: Sequence[Hashable] | None = None) -> float:
    """The mean over strata of each stratum's mean (every stratum weighs the same); the plain mean without strata."""
    _check_bootstrap(values, 1, 0.5)
    by_stratum: dict[Hashable, list[float]] = {}
    for stratum, value in zip(_labels(strata, len(values), "strata"), values):
        by_stratum.setdefault(stratum, []).append(float(value))
    return float(np.mean([np.mean(group) for group in by_stratum.values()]))


def _resampled_stats(sums: np.ndarray, counts: np.ndarray, groups: list[np.ndarray], n_resamples: int,
                     seed: int) -> np.ndarray:
    """The statistic of `n_resamples` cluster resamples: per stratum, as many clusters as it has, drawn with
    replacement, their summed values over their summed row counts; then the mean over strata. Drawn in chunks so
    memory stays bounded."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _BOOTSTRAP_CHUNK // sum(len(group) for group in groups))
    stats = []
    for start in range(0, n_resamples, per_chunk):
        rows = min(per_chunk, n_resamples - start)
        total = np.zeros(rows)
        for group in groups:
            drawn = group[rng.integers(0, len(group), size=(rows, len(group)))]
            total += sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
        stats.append(total / len(groups))
    return np.concatenate(stats)


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                 clusters: Sequence[Hashable] | None = None,
                 strata: Sequence[Hashable] | None = None) -> tuple[float, float, float]:
    """(estimate, low, high): the mean of per-row values (with `strata`, the mean over strata of their means) and
    its percentile cluster-bootstrap interval (module docstring), so a difference between two models can be read
    against the sampling noise of a small dev set. `clusters` and `strata` label the rows; without `clusters`
    every row is its own cluster (the row bootstrap)."""
    _check_bootstrap(values, n_resamples, level)
    array = np.asarray(values, dtype=float)
    row_cluster, groups = cluster_layout(len(array), clusters, strata)
    sums = np.bincount(row_cluster, weights=array, minlength=int(row_cluster.max()) + 1)
    counts = np.bincount(row_cluster, minlength=len(sums))
    estimate = float(np.mean([sums[group].sum() / counts[group].sum() for group in groups]))
    if len(groups) == 1 and len(groups[0]) == len(array):
        estimate = float(array.mean())  # the plain mean, rounded as numpy rounds it
    low, high = _quantiles(_resampled_stats(sums, counts, groups, n_resamples, seed), level)
    return estimate, low, high


def paired_difference_ci(a: Sequence[float], b: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                         level: float = 0.95, clusters: Sequence[Hashable] | None = None,
                         strata: Sequence[Hashable] | None = None) -> tuple[float, float, float]:
    """(estimate(a) - estimate(b), low, high) by a paired cluster bootstrap: each resample draws the clusters once
    for both (it resamples per-row differences), so the difficulty both models share cancels and the interval is
    narrower than two separate ones. A model compared with itself gives (0, 0, 0)."""
    if len(a) != len(b):
        raise ValueError(f"a paired difference needs the same items: {len(a)} values against {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    return bootstrap_ci(diffs, n_resamples, seed, level, clusters, strata)


def powers_of_two(n_max: int) -> list[int]:
    """1, 2, 4, ... up to `n_max`: the paper's best-of-N grid."""
    if n_max < 1:
        raise ValueError(f"best-of-N needs at least one candidate, not {n_max}")
    return [1 << k for k in range(n_max.bit_length())]


def _group_by_problem(pool: list[dict], scores_by_model: dict[str, Sequence[float]]) -> dict[str, list[int]]:
    """Row indices of each problem's candidates, problems in order of first appearance."""
    for name, scores in scores_by_model.items():
        if len(pool) != len(scores):
            raise ValueError(f"best-of-N needs one score per candidate: {len(pool)} candidates, {len(scores)} "
                             f"scores of {name!r}")
    by_problem: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(pool):
        by_problem[row["problem_id"]].append(index)
    return dict(by_problem)


def best_of_n_draws(size: int, n: int, trials: int, seed: int, problem: Hashable) -> np.ndarray:
    """[trials, n] candidate indices (0..size-1, distinct per row) of one problem's draws for best-of-`n`: a
    generator seeded by (seed, n, problem) alone, so every model, and every run with the same seed, sees them."""
    rng = random.Random(f"best-of-n:{seed}:{n}:{problem}")
    return np.array([rng.sample(range(size), n) for _ in range(trials)], dtype=np.int64).reshape(trials, n)


def _majority(answers: list, correct: np.ndarray, draws: np.ndarray, rng: random.Random) -> float:
    """Majority vote's mean correctness over the draws (module docstring); `rng` breaks ties, never a score."""
    total = 0.0
    for draw in draws.tolist():
        votes = Counter(answers[i] for i in draw if answers[i] is not None)
        if not votes:
            pick = draw[rng.randrange(len(draw))]
        else:
            top = max(votes.values())
            tied = sorted((answer for answer, count in votes.items() if count == top), key=str)
            winner = tied[rng.randrange(len(tied))] if len(tied) > 1 else tied[0]
            pick = next(i for i in draw if answers[i] == winner)  # the earliest drawn: a random one of them
        total += correct[pick]
    return total / len(draws)


def _problem_values(rows: list[dict], scores_by_model: dict[str, np.ndarray], n: int, trials: int, seed: int,
                    problem: Hashable) -> dict:
    """One problem's values for best-of-`n`: {"rm": {model: value}, baseline: value} over its seeded draws."""
    draws = best_of_n_draws(len(rows), n, trials, seed, problem)
    correct = np.array([bool(r["correct"]) for r in rows], dtype=float)
    drawn = correct[draws]
    trial = np.arange(trials)
    values = {"rm": {name: float(drawn[trial, scores[draws].argmax(axis=1)].mean())  # argmax: earliest top score
                     for name, scores in scores_by_model.items()},
              "random": float(drawn.mean()), "oracle": float(drawn.max(axis=1).mean())}
    majority_rng = random.Random(f"majority:{seed}:{n}:{problem}")
    values["majority"] = _majority([r["answer"] for r in rows], correct, draws, majority_rng)
    return values


def _bon_values(pool: list[dict], by_problem: dict[str, list[int]], scores_by_model: dict[str, Sequence[float]],
                n: int, trials: int, seed: int) -> dict:
    """{"rm": {model: [value per problem]}, baseline: [value per problem]} for best-of-`n`, problems in the
    order of `by_problem`."""
    arrays = {name: np.asarray(scores, dtype=float) for name, scores in scores_by_model.items()}
    out: dict = {"rm": {name: [] for name in arrays}, **{k: [] for k in BASELINES}}
    for problem, indices in by_problem.items():
        values = _problem_values([pool[i] for i in indices], {k: v[indices] for k, v in arrays.items()}, n, trials,
                                 seed, problem)
        for name, value in values["rm"].items():
            out["rm"][name].append(value)
        for strategy in BASELINES:
            out[strategy].append(values[strategy])
    return out


def best_of_n(pool: list[dict], scores: list[float], n_values: list[int], trials: int, seed: int) -> dict:
    """{N: {strategy: accuracy}}, averaged over problems and `trials` draws; an N larger than some problem's
    pool is an error here (`best_of_n_curves` skips it instead).

    `pool` rows carry problem_id, answer and correct; `scores` are the reward model's, aligned with pool.
    """
    by_problem = _group_by_problem(pool, {"model": scores})
    results = {}
    for n in n_values:
        for indices in by_problem.values():
            if n > len(indices):
                raise ValueError(f"best-of-{n} needs at least {n} candidates per problem, pool has {len(indices)}")
        values = _bon_values(pool, by_problem, {"model": scores}, n, trials, seed)
        results[n] = {k: float(np.mean(values["rm"]["model"] if k == "rm" else values[k])) for k in STRATEGIES}
    return results


def _curve() -> dict[str, list]:
    return {"mean": [], "low": [], "high": []}


def _append(curve: dict[str, list], point: tuple[float, float, float]) -> None:
    for key, value in zip(("mean", "low", "high"), point):
        curve[key].append(value)


def best_of_n_compare(pool: list[dict], scores_by_model: dict[str, Sequence[float]],
                      n_values: list[int] | None = None, trials: int = 16, seed: int = 0, n_resamples: int = 1000,
                      level: float = 0.95) -> dict:
    """Best-of-N curves of several reward models on identical draws, and the paired difference of the first two.

    `n_values` defaults to 1, 2, 4, ... up to the smallest pool. Pools may differ in size per problem; an N
    larger than the smallest pool is skipped (listed under "skipped_n") rather than run on the problems that
    have enough candidates, so every point of a curve averages the same problems.

    Returns {"n": [...], "skipped_n": [...], "problems": P, "trials": T, "level": L,
    "curves": {model: `best_of_n_curves` output}, and with two or more models
    "difference": {"a": first, "b": second, "mean": [...], "low": [...], "high": [...]}}: the rm strategy's
    accuracy of a minus b per N with a paired bootstrap over problems. Baselines read no score, so every
    model's curves carry the same ones.
    """
    if trials < 1:
        raise ValueError(f"best-of-N needs at least one draw per problem, not {trials}")
    if not scores_by_model:
        raise ValueError("best-of-N needs at least one model's scores")
    by_problem = _group_by_problem(pool, scores_by_model)
    if not by_problem:
        raise ValueError("best-of-N needs a non-empty candidate pool")
    smallest = min(len(c) for c in by_problem.values())
    wanted = powers_of_two(smallest) if n_values is None else sorted(set(n_values))
    if any(n < 1 for n in wanted):
        raise ValueError(f"best-of-N sizes must be at least 1: {wanted}")
    kept = [n for n in wanted if n <= smallest]
    models = list(scores_by_model)
    baselines = {k: _curve() for k in BASELINES}
    rm = {name: _curve() for name in models}
    difference = _curve()
    for n in kept:
        values = _bon_values(pool, by_problem, scores_by_model, n, trials, seed)
        for strategy, curve in baselines.items():
            _append(curve, bootstrap_ci(values[strategy], n_resamples, seed, level))
        for name, curve in rm.items():
            _append(curve, bootstrap_ci(values["rm"][name], n_resamples, seed, level))
        if len(models) >= 2:
            _append(difference, paired_difference_ci(values["rm"][models[0]], values["rm"][models[1]], n_resamples,
                                                     seed, level))
    common = {"n": kept, "skipped_n": [n for n in wanted if n > smallest], "problems": len(by_problem),
              "trials": trials, "level": level}
    result = {**common, "curves": {name: {**common, "strategies": {
        strategy: {k: list(v) for k, v in (rm[name] if strategy == "rm" else baselines[strategy]).items()}
        for strategy in STRATEGIES}} for name in models}}
    if len(models) >= 2:
        result["difference"] = {"a": models[0], "b": models[1], **difference}
    return result


def best_of_n_curves(pool: list[dict], scores: Sequence[float], n_values: list[int] | None = None, trials: int = 16,
                     seed: int = 0, n_resamples: int = 1000, level: float = 0.95) -> dict:
    """Best-of-N accuracy per strategy as curves over N for one reward model, each point with a bootstrap
    interval over problems (see `best_of_n_compare` for N and the draws).

    Returns {"n": [...], "skipped_n": [...], "problems": P, "trials": T, "level": L,
    "strategies": {strategy: {"mean": [...], "low": [...], "high": [...]}}} with lists aligned with "n".
    """
    return best_of_n_compare(pool, {"model": scores}, n_values, trials, seed, n_resamples, level)["curves"]["model"]
