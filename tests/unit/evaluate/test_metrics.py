"""Evaluation metrics: best-of-N by hand on made-up pools, cluster and stratified bootstrap intervals, paired
best-of-N differences on identical draws, a majority vote that reads no scores, option accuracy with ties."""

import random

import pytest

from codepmp.evaluate.metrics import (
    best_of_n,
    best_of_n_compare,
    best_of_n_curves,
    best_of_n_draws,
    bootstrap_ci,
    cluster_layout,
    option_accuracy,
    option_correct,
    paired_difference_ci,
    pairwise_correct,
    powers_of_two,
    stratified_mean,
)


def rows(problem: str, candidates: list[tuple[str | None, bool, float]]) -> tuple[list[dict], list[float]]:
    """Pool rows and aligned scores from (answer, correct, score) triples of one problem."""
    pool = [{"problem_id": problem, "answer": a, "correct": c} for a, c, _ in candidates]
    return pool, [s for _, _, s in candidates]


def merge(*parts: tuple[list[dict], list[float]]) -> tuple[list[dict], list[float]]:
    return [r for p, _ in parts for r in p], [s for _, ss in parts for s in ss]


# N = 3 draws every candidate, so each strategy's pick is fixed and can be worked out by hand:
#   p1: rm takes 0.9 (correct); "7" has two votes and wins the vote (wrong); 1 of 3 correct.
#   p2: rm takes 0.8 (wrong); "4" wins the vote (correct); 2 of 3 correct.
#   p3: "2" has two votes (wrong); rm takes 0.6 (wrong); 1 of 3 correct.
HAND_POOL = merge(
    rows("p1", [("5", True, 0.9), ("7", False, 0.2), ("7", False, 0.1)]),
    rows("p2", [("3", False, 0.8), ("4", True, 0.5), ("4", True, 0.4)]),
    rows("p3", [("2", False, 0.3), ("2", False, 0.6), ("9", True, 0.2)]),
)
HAND_EXPECTED = {"rm": 1 / 3, "majority": 1 / 3, "random": (1 / 3 + 2 / 3 + 1 / 3) / 3, "oracle": 1.0}


def random_pool(problems: int, size: int, seed: int, prefix: str = "q") -> list[dict]:
    rng = random.Random(seed)
    pool = []
    for p in range(problems):
        rate = rng.random()
        for _ in range(size):
            answer = str(rng.randint(0, 4))
            pool.append({"problem_id": f"{prefix}{p}", "answer": answer, "correct": rng.random() < rate})
    return pool


def test_best_of_n_by_hand_when_n_is_the_pool_size():
    pool, scores = HAND_POOL
    curves = best_of_n_curves(pool, scores, [3], trials=4, seed=0, n_resamples=200)
    assert curves["n"] == [3] and curves["skipped_n"] == [] and curves["problems"] == 3
    for strategy, expected in HAND_EXPECTED.items():
        assert curves["strategies"][strategy]["mean"] == [pytest.approx(expected)], strategy
    assert curves["strategies"]["oracle"]["low"] == [1.0] and curves["strategies"]["oracle"]["high"] == [1.0]
    assert best_of_n(pool, scores, [3], trials=4, seed=0)[3] == pytest.approx(HAND_EXPECTED)


def test_n_of_one_makes_every_strategy_the_same_pick():
    pool, scores = HAND_POOL
    point = best_of_n_curves(pool, scores, [1], trials=50, seed=3)["strategies"]
    assert point["rm"]["mean"] == point["random"]["mean"] == point["majority"]["mean"] == point["oracle"]["mean"]


def test_majority_ties_are_a_seeded_draw_that_reads_no_score():
    # "6" (right) and "8" (wrong) have two votes each: a fair seeded draw decides, whatever the scores say.
    pool, _ = rows("p", [("6", True, 0.0), ("6", True, 0.0), ("8", False, 0.0), ("8", False, 0.0)])
    runs = [best_of_n_curves(pool, [random.Random(k).random() for _ in pool], [4], trials=400, seed=5)
            for k in range(4)]
    majority = {r["strategies"]["majority"]["mean"][0] for r in runs}
    assert len(majority) == 1 and 0.4 < majority.pop() < 0.6  # the same for every score vector, about half
    assert best_of_n_curves(pool, [0.0] * 4, [4], trials=400, seed=6)["strategies"]["majority"] \
        != runs[0]["strategies"]["majority"]  # another seed, other tie breaks
    assert runs[0] == best_of_n_curves(pool, [random.Random(0).random() for _ in pool], [4], trials=400, seed=5)


def test_majority_is_the_same_whichever_models_are_compared():
    pool = random_pool(problems=10, size=8, seed=3)
    rng = random.Random(1)
    scores = {name: [rng.gauss(0, 1) for _ in pool] for name in ("a", "b", "c")}
    ab = best_of_n_compare(pool, {"a": scores["a"], "b": scores["b"]}, trials=6, seed=2, n_resamples=50)
    ca = best_of_n_compare(pool, {"c": scores["c"], "a": scores["a"]}, trials=6, seed=2, n_resamples=50)
    alone = best_of_n_curves(pool, scores["b"], trials=6, seed=2, n_resamples=50)
    for strategy in ("majority", "random", "oracle"):
        curve = alone["strategies"][strategy]
        assert ab["curves"]["a"]["strategies"][strategy] == ab["curves"]["b"]["strategies"][strategy] == curve
        assert ca["curves"]["c"]["strategies"][strategy] == curve
    assert ab["curves"]["a"]["strategies"]["rm"] == ca["curves"]["a"]["strategies"]["rm"]  # identical draws


def test_candidates_without_an_answer_abstain_from_the_vote():
    pool, scores = rows("p", [(None, False, 0.5), (None, False, 0.4), (None, False, 0.3), ("7", True, 0.1)])
    result = best_of_n_curves(pool, scores, [4], trials=1)["strategies"]
    assert result["majority"]["mean"] == [1.0] and result["rm"]["mean"] == [0.0]
    # No answer at all: a seeded random candidate (here right or wrong with even odds), not the rm pick.
    silent, silent_scores = rows("q", [(None, True, 0.5), (None, False, 0.9)])
    picks = best_of_n_curves(silent, silent_scores, [2], trials=400, seed=1)["strategies"]
    assert picks["rm"]["mean"] == [0.0] and 0.4 < picks["majority"]["mean"][0] < 0.6
    assert picks == best_of_n_curves(silent, [0.0, 0.0], [2], trials=400, seed=1)["strategies"] | {"rm": picks["rm"]}


def test_an_oracle_reward_model_matches_the_oracle_and_beats_random():
    pool = random_pool(problems=12, size=8, seed=1)
    rng = random.Random(2)
    scores = [(1.0 if r["correct"] else 0.0) + 0.5 * rng.random() for r in pool]  # every correct above every wrong
    curves = best_of_n_curves(pool, scores, trials=6, seed=0, n_resamples=200)
    assert curves["n"] == [1, 2, 4, 8]
    s = curves["strategies"]
    assert s["rm"]["mean"] == s["oracle"]["mean"]
    for random_, rm, oracle, majority in zip(s["random"]["mean"], s["rm"]["mean"], s["oracle"]["mean"],
                                             s["majority"]["mean"]):
        assert random_ <= rm <= oracle and majority <= oracle
    assert s["random"]["mean"][-1] < s["rm"]["mean"][-1]
    for curve in s.values():
        assert all(lo <= m <= hi for lo, m, hi in zip(curve["low"], curve["mean"], curve["high"]))


def test_n_larger_than_the_smallest_pool_is_skipped():
    pool = random_pool(problems=3, size=5, seed=0) + random_pool(problems=2, size=3, seed=1, prefix="small")
    scores = [0.0] * len(pool)
    assert best_of_n_curves(pool, scores, trials=2)["n"] == [1, 2]
    curves = best_of_n_curves(pool, scores, [1, 2, 3, 4, 8], trials=2)
    assert curves["n"] == [1, 2, 3] and curves["skipped_n"] == [4, 8] and curves["problems"] == 5
    assert all(len(c["mean"]) == 3 for c in curves["strategies"].values())
    with pytest.raises(ValueError, match="best-of-4"):
        best_of_n(pool, scores, [4], trials=1, seed=0)


def test_curves_are_seeded_and_each_n_draws_on_its_own():
    pool = random_pool(problems=6, size=8, seed=4)
    scores = [random.Random(i).random() for i in range(len(pool))]
    both = best_of_n_curves(pool, scores, [2, 4], trials=5, seed=7)
    assert both == best_of_n_curves(pool, scores, [2, 4], trials=5, seed=7)
    alone = best_of_n_curves(pool, scores, [4], trials=5, seed=7)
    assert alone["strategies"]["rm"]["mean"] == both["strategies"]["rm"]["mean"][1:]


def test_best_of_n_rejects_scores_that_do_not_match_the_pool():
    pool, scores = HAND_POOL
    with pytest.raises(ValueError, match="one score per candidate"):
        best_of_n_curves(pool, scores[:-1])


def test_powers_of_two():
    assert powers_of_two(1) == [1] and powers_of_two(8) == [1, 2, 4, 8] and powers_of_two(12) == [1, 2, 4, 8]


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_items():
    mean, low, high = bootstrap_ci([1.0, 0.0] * 10, seed=1)
    assert mean == 0.5 and low < mean < high
    big_mean, big_low, big_high = bootstrap_ci([1.0, 0.0] * 500, seed=1)
    assert big_mean == 0.5 and big_low < 0.5 < big_high
    assert big_high - big_low < (high - low) / 3
    assert bootstrap_ci([0.7] * 5) == (pytest.approx(0.7), pytest.approx(0.7), pytest.approx(0.7))
    assert bootstrap_ci([1.0, 0.0, 1.0], seed=5) == bootstrap_ci([1.0, 0.0, 1.0], seed=5)


def test_paired_difference():
    same = [1.0, 0.0, 1.0, 1.0, 0.0]
    assert paired_difference_ci(same, same) == (0.0, 0.0, 0.0)
    rng = random.Random(0)
    a = [float(rng.random() < 0.6) for _ in range(300)]
    b = [x if rng.random() < 0.9 else 1.0 - x for x in a]  # b agrees with a on about 90 % of the items
    diff, low, high = paired_difference_ci(a, b, seed=2)
    assert diff == pytest.approx(sum(a) / 300 - sum(b) / 300) and low <= diff <= high
    _, a_low, a_high = bootstrap_ci(a, seed=2)
    assert high - low < a_high - a_low  # pairing cancels what both share
    with pytest.raises(ValueError, match="same items"):
        paired_difference_ci(a, b[:-1])


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], level=1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], n_resamples=0)


def test_option_accuracy_counts_ties_as_wrong():
    scores = [[0.1, 0.9, 0.3], [0.5, 0.5, 0.1], [0.2, 0.1, 0.0], [1.0, 2.0]]
    gold = [1, 0, 2, 1]
    assert option_correct(scores, gold) == [1.0, 0.0, 0.0, 1.0]
    assert option_accuracy(scores, gold) == 0.5
    with pytest.raises(ValueError, match="gold option 3"):
        option_accuracy([[0.1, 0.2]], [3])
    with pytest.raises(ValueError):
        option_accuracy([], [])


def test_pairwise_correct_per_item():
    assert pairwise_correct([1.0, 2.0, 0.5], [0.0, 2.0, 1.0]) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        pairwise_correct([1.0], [])


def test_cluster_bootstrap_is_the_row_bootstrap_for_singletons_and_wider_for_correlated_clusters():
    rng = random.Random(3)
    values = [float(rng.random() < 0.6) for _ in range(60)]
    row = bootstrap_ci(values, 500, seed=4)
    assert bootstrap_ci(values, 500, seed=4, clusters=[f"c{i}" for i in range(60)]) == row
    # Every value three times, the copies one cluster: 180 rows but only 60 independent items.
    tripled = [v for v in values for _ in range(3)]
    clusters = [i // 3 for i in range(180)]
    as_rows = bootstrap_ci(tripled, 500, seed=4)
    as_clusters = bootstrap_ci(tripled, 500, seed=4, clusters=clusters)
    assert as_rows[0] == pytest.approx(as_clusters[0]) == pytest.approx(row[0])
    assert as_clusters[2] - as_clusters[1] > 1.4 * (as_rows[2] - as_rows[1])  # about sqrt(3) wider
    assert as_clusters[1:] == pytest.approx(row[1:], abs=0.03)  # what 60 independent items give
    # A paired difference resamples the same clusters for both: a model against itself is exactly 0.
    assert paired_difference_ci(tripled, tripled, clusters=clusters) == (0.0, 0.0, 0.0)


def test_stratified_pooled_metric_is_the_mean_of_the_domain_metrics():
    rng = random.Random(5)
    sizes = {"gsm8k": 10, "math": 6, "logiqa2": 60}  # the logic domain has most rows but weighs a third
    values, strata, clusters = [], [], []
    for domain, size in sizes.items():
        rate = {"gsm8k": 0.9, "math": 0.5, "logiqa2": 0.2}[domain]
        for i in range(size):
            values.append(float(rng.random() < rate))
            strata.append(domain)
            clusters.append(f"{domain}-{i // 3}")
    per_domain = [sum(v for v, s in zip(values, strata) if s == d) / n for d, n in sizes.items()]
    mean, low, high = bootstrap_ci(values, 400, seed=1, clusters=clusters, strata=strata)
    assert mean == pytest.approx(sum(per_domain) / 3) == pytest.approx(stratified_mean(values, strata))
    assert mean != pytest.approx(sum(values) / len(values))
    assert low <= mean <= high
    _, groups = cluster_layout(len(values), clusters, strata)
    assert [len(g) for g in groups] == [4, 2, 20]  # clusters per domain, each resampled within its domain
    other = [1.0 - v for v in values]
    diff = paired_difference_ci(values, other, 400, seed=1, clusters=clusters, strata=strata)
    assert diff[0] == pytest.approx(mean - stratified_mean(other, strata)) and diff[1] <= diff[0] <= diff[2]


def test_paired_best_of_n_difference_on_identical_draws():
    pool = random_pool(problems=12, size=8, seed=6)
    rng = random.Random(7)
    good = [(1.0 if r["correct"] else 0.0) + rng.random() for r in pool]
    noise = [rng.random() for _ in pool]
    same = best_of_n_compare(pool, {"pmp": good, "control": list(good)}, [1, 2, 4, 8], trials=5, seed=3,
                             n_resamples=200)
    assert same["difference"]["a"] == "pmp" and same["difference"]["b"] == "control"
    for key in ("mean", "low", "high"):
        assert same["difference"][key] == [0.0] * 4  # a model against itself: exactly 0, zero width
    versus = best_of_n_compare(pool, {"pmp": good, "control": noise}, [1, 2, 4, 8], trials=5, seed=3,
                               n_resamples=200)
    d = versus["difference"]
    assert d["mean"][0] == pytest.approx(0.0)  # N=1: one candidate, no choice
    for i, n in enumerate(versus["n"]):
        pmp, control = (versus["curves"][m]["strategies"]["rm"]["mean"][i] for m in ("pmp", "control"))
        assert d["mean"][i] == pytest.approx(pmp - control) and d["low"][i] <= d["mean"][i] <= d["high"][i]
    assert d["low"][-1] > 0  # perfect scores beat noise at N=8
    assert "difference" not in best_of_n_compare(pool, {"pmp": good}, [2], trials=2)


def test_draws_depend_on_seed_n_and_problem_only():
    assert (best_of_n_draws(8, 4, 5, 0, "q1") == best_of_n_draws(8, 4, 5, 0, "q1")).all()
    assert not (best_of_n_draws(8, 4, 5, 123, "q1") == best_of_n_draws(8, 4, 5, 0, "q1")).all()
    assert not (best_of_n_draws(8, 4, 5, 0, "q2") == best_of_n_draws(8, 4, 5, 0, "q1")).all()
    draws = best_of_n_draws(8, 4, 5, 0, "q1")
    assert draws.shape == (5, 4) and all(len(set(row)) == 4 for row in draws.tolist())
    pool = random_pool(problems=8, size=8, seed=2)
    scores = [random.Random(i).random() for i in range(len(pool))]
    first, paper = (best_of_n_curves(pool, scores, trials=4, seed=s, n_resamples=50) for s in (0, 123))
    assert first.keys() == paper.keys() and first["n"] == paper["n"]
    assert first["strategies"]["rm"]["mean"] != paper["strategies"]["rm"]["mean"]
    assert first["strategies"]["oracle"]["mean"][-1] == paper["strategies"]["oracle"]["mean"][-1]  # N = pool
