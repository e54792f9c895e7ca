import random

import pytest

from codepmp.errors import InputError
from codepmp.evaluate.metrics import best_of_n, pairwise_accuracy
from codepmp.reasoning.gsm8k import (
    Problem,
    corrupt,
    final_answer,
    load_problems,
    training_pairs,
)


def test_final_answer_normalizes():
    assert final_answer("so 3 + 4 = 7\n#### 1,000") == "1000"
    assert final_answer("#### $12.50") == "12.5"
    assert final_answer("no hash, last number 42.0") == "42"
    assert final_answer("nothing") is None


def test_packaged_sample_loads_without_calc_annotations():
    problems = load_problems("", "dev")
    assert len(problems) == 64
    assert all("<<" not in p.solution and p.answer == final_answer(p.solution) for p in problems)


def test_corruptions_are_wrong_and_fluent():
    rng = random.Random(0)
    for p in load_problems("", "train")[:50]:
        bad = corrupt(p, rng)
        assert final_answer(bad) != p.answer
        assert bad.count("\n") == p.solution.count("\n")


def test_pairs_and_pool_labels():
    problems = [Problem("a", "What is 2+3?", "2 + 3 = 5\n#### 5", "5")]
    pairs = training_pairs(problems, rejected_per_problem=2, seed=0)
    assert len(pairs) == 2 and pairs[0].prompt == "Instruction:What is 2+3?\n\nResponse:"
    from codepmp.reasoning.build import Domain, _corrupted_pool
    from codepmp.reasoning.tasks import gsm8k_tasks

    domain = Domain("gsm8k", problems, problems, gsm8k_tasks, training_pairs)
    pool = _corrupted_pool(domain, problems, size=4, seed=0)
    assert [r["correct"] for r in pool] == [True, False, False, False]
    assert {r["gold"] for r in pool} == {"5"} and pool[0]["answer"] == "5"


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path)):
        load_problems(str(tmp_path), "train")


def test_pairwise_accuracy_ties_count_wrong():
    assert pairwise_accuracy([1.0, 2.0, 0.5], [0.0, 2.0, 1.0]) == pytest.approx(1 / 3)


def test_best_of_n_perfect_and_inverted_rewards():
    pool = [{"problem_id": p, "answer": str(k), "correct": k == 0} for p in "ab" for k in range(4)]
    perfect = [1.0 if r["correct"] else 0.0 for r in pool]
    res = best_of_n(pool, perfect, [1, 4], trials=50, seed=0)
    assert res[4]["rm"] == 1.0 and res[4]["oracle"] == 1.0
    assert res[1]["rm"] == pytest.approx(res[1]["oracle"])  # N=1: the pick is the only candidate
    inverted = [-s for s in perfect]
    assert best_of_n(pool, inverted, [4], trials=5, seed=0)[4]["rm"] == 0.0
    assert best_of_n(pool, perfect, [4], trials=5, seed=0)[4]["random"] == pytest.approx(0.25)
