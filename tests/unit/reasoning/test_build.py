"""The reasoning data stage over several domains, on a made-up data folder in the shared/data layout."""

import dataclasses
import json
from pathlib import Path

import pytest

from codepmp.config import ReasoningConfig
from codepmp.errors import ConfigError, InputError
from codepmp.reasoning.answers import gsm8k_equal, math_equal
from codepmp.pairs import read_reasoning_pairs, read_reasoning_table
from codepmp.reasoning.build import build_reasoning_data


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
    train = read_reasoning_table(tmp_path, "train")
    assert {d: sum(r["domain"] == d for r in train) for d in ("gsm8k", "math", "logiqa2")} == \
        {"gsm8k": 3, "math": 3, "logiqa2": 9}  # a logic item gives one pair per wrong option
    pool = read_reasoning_table(tmp_path, "pool")
    assert {r["domain"] for r in pool} == {"gsm8k", "math"} and len(pool) == 2 * 2 * 4
    for row in pool:  # every candidate's label is its answer check against the gold
        check = gsm8k_equal if row["domain"] == "gsm8k" else math_equal
        assert row["correct"] == check(row["response"], row["gold"])
    assert sum(r["correct"] for r in pool) == 4  # the reference of each of the 4 problems
    logic_rows = read_reasoning_table(tmp_path, "logic")
    assert len(logic_rows) == 2 * 4 and all(0 <= r["gold"] < 4 for r in logic_rows)
    held_out = {r["item_id"] for r in logic_rows}
    assert held_out <= {"100", "101", "102", "103"}  # dev items come from dev200 ...
    assert not any(f"Passage {i}:" in r["prompt"] for r in train for i in range(4))  # ... and never train
    written = json.loads((tmp_path / "stats.json").read_text())
    assert set(written["sha256"]) == {"train", "dev", "pool", "logic"} and stats["train"] == 15
    assert len(read_reasoning_pairs(tmp_path, "dev")) == 2 + 2 + 2 * 3


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
    pool = read_reasoning_table(tmp_path / "out", "pool")
    assert len(pool) == 8 and sum(r["correct"] for r in pool) == 1 and {r["domain"] for r in pool} == {"gsm8k"}


# --- policy-sampled dev pairs and pools ----------------------------------------------------------------------

class ScriptedPolicy:
    """A policy that knows each prompt's gold answer and is right on a seeded third of its samples, so pools
    and pairs get both kinds; it records every call's seed and size."""

    def __init__(self, golds: dict[str, str]):
        self.golds, self.calls = golds, []

    def generate(self, prompts, sampling, desc=""):
        self.calls.append((desc, sampling.seed, len(prompts)))
        out = []
        for i, prompt in enumerate(prompts):
            gold = int(self.golds[prompt])
            answer = gold if (i + sampling.seed) % 3 == 0 else gold + 7 + i % 2
            out.append(f"Working it out gives $\\boxed{{{answer}}}$.\n#### {answer}")
        return out


def _policy(data_dir):
    from codepmp.reasoning.gsm8k import load_problems
    from codepmp.reasoning.math import load_math, math_tasks
    from codepmp.reasoning.tasks import gsm8k_tasks

    tasks = [t for split in ("train", "dev") for t in gsm8k_tasks(load_problems(str(data_dir), split))
             + math_tasks(load_math(data_dir, split))]
    return ScriptedPolicy({t.prompt: t.gold for t in tasks})


def _check_pairs_against_checkers(pairs):
    for row in pairs:
        check = gsm8k_equal if row["domain"] == "gsm8k" else math_equal
        gold = row["chosen"].rsplit("#### ", 1)[1]
        assert check(row["chosen"], gold) and not check(row["rejected"], gold)


def test_sampled_pool_labels_policy_samples_and_gives_the_dev_pairs(data_dir, tmp_path):
    policy = _policy(data_dir)
    cfg = ReasoningConfig(data_dir=str(data_dir), domains=["gsm8k", "math"], train_problems=3, dev_problems=3,
                          pairs="sampled", pool="sampled", samples_per_problem=4, candidates_per_problem=6,
                          dev_pairs_per_problem=2, seed=5)
    build_reasoning_data(cfg, tmp_path, policy=lambda: policy)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["sources"] == {"train_pairs": "sampled", "dev_pairs": "sampled", "pool": "sampled"}
    assert stats["seeds"]["gsm8k"] == {"problems": 5, "train_pairs": 5, "dev_pairs": 7, "pool": 7}
    assert stats["seeds"]["math"] == {"problems": 1005, "train_pairs": 1005, "dev_pairs": 1007, "pool": 1007}
    # Per domain: train samples (k per problem), then the pool (candidates_per_problem), with the recorded seeds;
    # the dev pairs need no sampling of their own.
    assert [(seed, n) for _, seed, n in policy.calls] == [(5, 12), (7, 18), (1005, 12), (1007, 18)]
    pool = read_reasoning_table(tmp_path, "pool")
    assert len(pool) == 2 * 3 * 6
    for row in pool:
        check = gsm8k_equal if row["domain"] == "gsm8k" else math_equal
        assert row["correct"] == check(row["response"], row["gold"])
    by_problem = {}
    for row in pool:
        by_problem.setdefault(row["problem_id"], []).append(row["correct"])
    assert all(0 < sum(marks) < len(marks) for marks in by_problem.values())  # not the reference plus corruptions
    dev = read_reasoning_table(tmp_path, "dev")
    _check_pairs_against_checkers(dev)
    responses = {(r["prompt"], r["response"]) for r in pool}
    assert all((p["prompt"], p["chosen"]) in responses and (p["prompt"], p["rejected"]) in responses for p in dev)
    assert len(dev) == 2 * 3 * 2 and stats["domains"]["math"]["dev_sampling"]["pairs"] == 6
    _check_pairs_against_checkers(read_reasoning_table(tmp_path, "train"))


def test_sampled_pairs_with_a_corrupted_pool_sample_their_own_dev_solutions(data_dir, tmp_path):
    policy = _policy(data_dir)
    cfg = ReasoningConfig(data_dir=str(data_dir), train_problems=2, dev_problems=3, pairs="sampled",
                          samples_per_problem=3, candidates_per_problem=4)
    build_reasoning_data(cfg, tmp_path, policy=lambda: policy)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["sources"] == {"train_pairs": "sampled", "dev_pairs": "sampled", "pool": "corrupted"}
    assert [(seed, n) for _, seed, n in policy.calls] == [(0, 6), (stats["seeds"]["gsm8k"]["dev_pairs"], 9)]
    assert stats["seeds"]["gsm8k"]["dev_pairs"] == 1
    assert stats["domains"]["gsm8k"]["dev_sampling"]["samples"] == 9
    _check_pairs_against_checkers(read_reasoning_table(tmp_path, "dev"))
    assert sum(r["correct"] for r in read_reasoning_table(tmp_path, "pool")) == 3  # the corrupted pool: references only


def test_corrupted_sources_are_recorded(data_dir, tmp_path):
    stats = build_reasoning_data(ReasoningConfig(data_dir=str(data_dir), domains=["gsm8k", "logiqa2"],
                                                 train_problems=2, dev_problems=2), tmp_path)
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written["sources"] == {"train_pairs": "corrupted", "dev_pairs": "corrupted", "pool": "corrupted"}
    assert written["domains"]["logiqa2"]["sources"] == {"train_pairs": "options", "dev_pairs": "options"}
    assert written["seeds"] == {"gsm8k": {"problems": 0, "train_pairs": 0, "dev_pairs": 1, "pool": 2},
                                "logiqa2": {"problems": 1000}}
    assert stats["pool_correct_fraction"] == pytest.approx(2 / 16)


def test_sampling_settings_are_checked(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="samples_per_problem is 1: sampled pairs need at least 2"):
        build_reasoning_data(ReasoningConfig(pairs="sampled", samples_per_problem=1), tmp_path)
    with pytest.raises(ConfigError, match="reasoning.dev_pairs_per_problem must be at least 1, got 0"):
        build_reasoning_data(ReasoningConfig(dev_pairs_per_problem=0), tmp_path)


# --- logic item ids ------------------------------------------------------------------------------------------

def test_reused_logic_ids_are_renamed_and_repeats_dropped(tmp_path):
    def item(i, passage):
        return {"id": i, "answer": 1, "text": passage, "question": "Which follows?",
                "options": ["w", "x", "y", "z"], "type": {}}

    # Upstream-like: id 7 reused for a different item, item 8 repeated verbatim, item 9 repeated under id 99.
    dev = [item(7, "Alpha passage."), item(8, "Beta passage."), item(7, "Gamma passage."),
           item(8, "Beta passage."), item(9, "Delta passage."), item(99, "Delta passage."), item(10, "Eps passage.")]
    _jsonl(tmp_path / "logiqa2" / "dev.jsonl", dev)
    _jsonl(tmp_path / "logiqa2" / "dev200.jsonl", [dev[2], dev[6]])  # the second item with id 7 is held out
    cfg = ReasoningConfig(data_dir=str(tmp_path), domains=["logiqa2"], train_problems=3, dev_problems=2)
    build_reasoning_data(cfg, tmp_path / "out")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["domains"]["logiqa2"]["id_repairs"] == {"train": {"renamed": 1, "dropped": 2},
                                                         "dev": {"renamed": 0, "dropped": 0}}
    logic_rows = read_reasoning_table(tmp_path / "out", "logic")
    prompts = {}
    for row in logic_rows:
        prompts.setdefault(row["item_id"], set()).add(row["prompt"])
    assert sorted(prompts) == ["10", "7"] and all(len(p) == 1 for p in prompts.values())
    # Held out by content: Gamma (id 7 in dev200, '7#2' in dev) is not trained on, Alpha (also id 7) is.
    train_prompts = " ".join(r["prompt"] for r in read_reasoning_table(tmp_path / "out", "train"))
    assert "Alpha passage." in train_prompts and "Gamma" not in train_prompts and "Eps" not in train_prompts


def test_unique_items_on_made_up_items():
    from codepmp.reasoning.logic import LogicItem, unique_items

    a, b = LogicItem("1", "p", "q", ("x", "y"), 0), LogicItem("1", "p2", "q", ("x", "y"), 0)
    items, stats = unique_items([a, b, a, LogicItem("1#2", "p3", "q", ("x", "y"), 1), b])
    assert [i.id for i in items] == ["1", "1#2", "1#2#2"] and (stats.renamed, stats.dropped) == (2, 2)


# --- extra pairs against dev problems ------------------------------------------------------------------------

def test_extra_pairs_holding_a_dev_problem_are_dropped_and_counted(data_dir, tmp_path):
    from codepmp.reasoning.gsm8k import load_problems

    dev_question = load_problems(str(data_dir), "dev")[1].question
    extra = tmp_path / "pairs.jsonl"
    _jsonl(extra, [{"prompt": "Instruction:" + dev_question.upper().replace(" ", "\n  ") + "\n\nResponse:",
                    "chosen": " right", "rejected": " wrong"},
                   {"prompt": "Instruction:Tom has 3 apples and buys many more.\n\nResponse:",  # a shared opening
                    "chosen": " right", "rejected": " wrong"},
                   {"prompt": "Instruction:Passage 2: all cats are animals. Which follows?\n\nResponse:",
                    "chosen": " right", "rejected": " wrong"}])
    cfg = ReasoningConfig(data_dir=str(data_dir), domains=["gsm8k", "logiqa2"], train_problems=2,
                          dev_problems=1, extra_pairs=[str(extra)])
    build_reasoning_data(cfg, tmp_path / "out")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    # Every dev problem of the run counts (the whole dev file), not only the ones drawn for evaluation.
    assert stats["extra_pairs"] == {"read": 3, "dropped_dev_problem": 2, "kept": 1}
    kept = [r["prompt"] for r in read_reasoning_table(tmp_path / "out", "train") if r["domain"] == "extra"]
    assert kept == ["Instruction:Tom has 3 apples and buys many more.\n\nResponse:"]


def test_held_out_texts_are_found_whole_whatever_the_layout():
    from codepmp.reasoning.leakage import HeldOut

    held = HeldOut(["What is 2 + 3?", "A long question about seven red apples in one basket on a table."])
    assert held.found_in("Instruction:what is 2+3?\n\nResponse:")
    assert held.found_in("Q: a LONG question about seven red apples in one basket on a table. Now answer.")
    assert not held.found_in("A long question about seven red apples in one basket on a chair.")
    assert not held.found_in("What is 2 + 4?") and len(held) == 2


# --- imported pools per domain -------------------------------------------------------------------------------

def test_imported_pools_come_from_each_domains_own_file(data_dir, tmp_path):
    files = {}
    for name, prefix, right in (("gsm8k", "g-dev-", "#### 5"), ("math", "dev/algebra/", "$\\boxed{1}$")):
        files[name] = str(tmp_path / f"{name}.jsonl")
        ids = [f"{prefix}{i}" + (".json" if name == "math" else "") for i in range(4)]
        _jsonl(Path(files[name]), [{"problem_id": i, "candidates": [{"text": right, "is_correct": True},
                                                                    {"text": "#### 0", "is_correct": False}]}
                                   for i in ids])
    cfg = ReasoningConfig(data_dir=str(data_dir), domains=["gsm8k", "math"], train_problems=2, dev_problems=4,
                          pool="import", pool_files=files)
    build_reasoning_data(cfg, tmp_path / "out")
    pool = read_reasoning_table(tmp_path / "out", "pool")
    assert {(r["domain"], r["problem_id"].split("-")[0].split("/")[0]) for r in pool} == {("gsm8k", "g"),
                                                                                           ("math", "dev")}
    assert len(pool) == 16
    with pytest.raises(ConfigError, match="pool_file is one file but the run has math domains"):
        build_reasoning_data(dataclasses.replace(cfg, pool_files={}, pool_file=files["gsm8k"]), tmp_path / "x")
    with pytest.raises(ConfigError, match=r"pool_files has no file for \['math'\]"):
        build_reasoning_data(dataclasses.replace(cfg, pool_files={"gsm8k": files["gsm8k"]}), tmp_path / "x")
    with pytest.raises(ConfigError, match=r"pool_files names \['reclor'\]"):
        build_reasoning_data(dataclasses.replace(cfg, pool_files={**files, "reclor": "x"}), tmp_path / "x")


def test_evaluation_files_name_every_dev_file_of_the_run(data_dir):
    from codepmp.reasoning.build import evaluation_files

    cfg = ReasoningConfig(data_dir=str(data_dir), domains=["math", "logiqa2"], pool="import",
                          pool_file=str(data_dir / "gsm8k" / "dev.jsonl"))
    assert [str(Path(p).relative_to(data_dir)) for p in evaluation_files(cfg)] == \
        ["math/dev.jsonl", "logiqa2/dev.jsonl", "logiqa2/dev200.jsonl", "gsm8k/dev.jsonl"]
    assert evaluation_files(ReasoningConfig())[0].endswith("gsm8k_dev.jsonl")
    with pytest.raises(InputError, match="reclor/val.json' does not exist"):
        evaluation_files(ReasoningConfig(data_dir=str(data_dir), domains=["reclor"]))


def test_paper_profile_samples_enough_and_pools_reach_the_largest_n():
    from codepmp.config import load_config

    paper = load_config("paper")
    assert paper.reasoning.samples_per_problem >= 8 and paper.reasoning.candidates_per_problem >= 256
    assert max(paper.evaluate.best_of_n) == paper.reasoning.candidates_per_problem
    assert (paper.reasoning.pairs, paper.reasoning.pool) == ("sampled", "sampled")
    local = load_config("local", {"reasoning": {"pool_files": {"gsm8k": "a.jsonl"}}})
    assert (local.reasoning.pairs, local.reasoning.pool) == ("corrupted", "shipped")  # shipped policy pool
    assert local.reasoning.pool_files == {"gsm8k": "a.jsonl"}
    with pytest.raises(ConfigError, match="reasoning.pool_files' expects dict"):
        load_config("local", {"reasoning": {"pool_files": ["a.jsonl"]}})
