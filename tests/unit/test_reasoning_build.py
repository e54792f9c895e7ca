"""The reasoning data stage over several domains, on a made-up data folder in the shared/data layout."""

import json

import pytest

from codepmp.config import ReasoningConfig
from codepmp.errors import ConfigError, InputError
from codepmp.reasoning.answers import gsm8k_equal, math_equal
from codepmp.reasoning.build import build_reasoning_data, read_pairs, read_table


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for split, n in (("train", 6), ("dev", 4)):
        _jsonl(root / "gsm8k" / f"{split}.jsonl",
               [{"id": f"g-{split}-{i}", "question": f"Tom has {i + 2} apples and buys {i + 3} more. How many?",
                 "answer": f"He has {i + 2} + {i + 3} = <<{i + 2}+{i + 3}={2 * i + 5}>>{2 * i + 5} apples.\n"
                           f"#### {2 * i + 5}"} for i in range(n)])
        _jsonl(root / "math" / f"{split}.jsonl",
               [{"problem": f"What is $\\frac{{{i + 1}}}{{2}} + \\frac{{{i + 1}}}{{2}}$?",
                 "solution": f"Adding the halves gives $\\boxed{{{i + 1}}}$.", "answer": str(i + 1),
                 "subject": "Algebra", "level": 1, "unique_id": f"{split}/algebra/{i}.json"} for i in range(n)])
    items = [{"id": 100 + i, "answer": i % 4, "text": f"Passage {i}: all cats are animals.",
              "question": f"Which follows ({i})?", "options": [f"option {k} of {i}" for k in range(4)],
              "type": {"Categorical Reasoning": True}} for i in range(10)]
    _jsonl(root / "logiqa2" / "dev.jsonl", items)
    _jsonl(root / "logiqa2" / "dev200.jsonl", items[:4])
    return root


def test_every_domain_gets_pairs_dev_pairs_and_its_evaluation_table(data_dir, tmp_path):
    cfg = ReasoningConfig(data_dir=str(data_dir), domains=["gsm8k", "math", "logiqa2"], train_problems=3,
                          dev_problems=2, candidates_per_problem=4)
    stats = build_reasoning_data(cfg, tmp_path)
    train = read_table(tmp_path, "train")
    assert {d: sum(r["domain"] == d for r in train) for d in ("gsm8k", "math", "logiqa2")} == \
        {"gsm8k": 3, "math": 3, "logiqa2": 9}  # a logic item gives one pair per wrong option
    pool = read_table(tmp_path, "pool")
    assert {r["domain"] for r in pool} == {"gsm8k", "math"} and len(pool) == 2 * 2 * 4
    for row in pool:  # every candidate's label is its answer check against the gold
        check = gsm8k_equal if row["domain"] == "gsm8k" else math_equal
        assert row["correct"] == check(row["response"], row["gold"])
    assert sum(r["correct"] for r in pool) == 4  # the reference of each of the 4 problems
    logic_rows = read_table(tmp_path, "logic")
    assert len(logic_rows) == 2 * 4 and all(0 <= r["gold"] < 4 for r in logic_rows)
    held_out = {r["item_id"] for r in logic_rows}
    assert held_out <= {"100", "101", "102", "103"}  # dev items come from dev200 ...
    assert not any(f"Passage {i}:" in r["prompt"] for r in train for i in range(4))  # ... and never train
    written = json.loads((tmp_path / "stats.json").read_text())
    assert set(written["sha256"]) == {"train", "dev", "pool", "logic"} and stats["train"] == 15
    assert len(read_pairs(tmp_path, "dev")) == 2 + 2 + 2 * 3


def test_domain_and_source_errors_are_clear(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="reasoning domain 'math' needs reasoning.data_dir"):
        build_reasoning_data(ReasoningConfig(domains=["math"]), tmp_path)
    with pytest.raises(ConfigError, match="unknown reasoning domain 'chess'"):
        build_reasoning_data(ReasoningConfig(data_dir=str(data_dir), domains=["chess"]), tmp_path)
    with pytest.raises(InputError, match="asked for 9 math dev problems but there are only 4"):
        build_reasoning_data(ReasoningConfig(data_dir=str(data_dir), domains=["math"], train_problems=2,
                                             dev_problems=9), tmp_path)
    with pytest.raises(ConfigError, match="pool is 'import' but reasoning.pool_file is empty"):
        build_reasoning_data(ReasoningConfig(pool="import"), tmp_path)
    with pytest.raises(ConfigError, match="need a policy backend"):
        build_reasoning_data(ReasoningConfig(pairs="sampled", train_problems=2, dev_problems=2), tmp_path)
    assert not (tmp_path / "train_pairs.parquet").exists()  # nothing half-written


def test_imported_pool_replaces_corruptions(data_dir, tmp_path):
    pool_file = tmp_path / "pool.jsonl"
    _jsonl(pool_file, [{"problem_id": f"g-dev-{i}", "candidates": [{"text": "#### 5", "is_correct": i == 0},
                                                                   {"text": "#### 1", "is_correct": False}]}
                       for i in range(4)])
    cfg = ReasoningConfig(data_dir=str(data_dir), train_problems=2, dev_problems=4, pool="import",
                          pool_file=str(pool_file))
    build_reasoning_data(cfg, tmp_path / "out")
    pool = read_table(tmp_path / "out", "pool")
    assert len(pool) == 8 and sum(r["correct"] for r in pool) == 1 and {r["domain"] for r in pool} == {"gsm8k"}
