"""Scoring: a token trie run with tree attention gives the rewards of scoring each text alone."""

import pytest

from codepmp.evaluate.run import Scorer, trie_packs
from codepmp.testing import write_tiny_model


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    return str(write_tiny_model(tmp_path_factory.mktemp("rm") / "model", reward=True, seed=4))


def _distinct_trie_nodes(rows: list[list[int]]) -> int:
    return len({tuple(row[:end]) for row in rows for end in range(1, len(row) + 1)})


def test_trie_scores_equal_one_at_a_time_scores_and_shared_tokens_run_once(reward_model):
    question = "Instruction:What is 12 times 3, then plus 5?\n\nResponse:"
    steps = " First, 12 times 3 is 36, because twelve threes make thirty-six."
    texts = [(question, steps + f" Then 36 plus 5 is {41 + k}. #### {41 + k}") for k in range(3)]
    texts += [(question, f" I think the answer is {k}.") for k in range(2)]
    texts += [texts[0], (question, steps)]  # a repeat, and a text that another one extends
    texts += [("Instruction:hi\n\nResponse:", " 1"), ("Instruction:A lone question\n\nResponse:", " yes")]
    shared = Scorer(reward_model, batch_size=3, max_length=256)
    alone = Scorer(reward_model, batch_size=1, max_length=256, share=False)
    assert shared(texts) == pytest.approx(alone(texts), abs=1e-5)
    rows = [list(ids) for ids in {tuple(shared.tokenizer(p + r)["input_ids"]) for p, r in texts}]
    assert alone.tokens_run == alone.tokens == shared.tokens
    assert shared.tokens_run == _distinct_trie_nodes(rows) < shared.tokens / 2


def test_packs_split_the_trie_and_repeat_a_shared_start_once_per_pack(reward_model):
    rows = {k: [1, 2, 3, 4] + [10 + k, 20 + k] for k in range(5)}
    packs = trie_packs(rows, pack_tokens=8)
    assert [len(p.tokens) for p in packs] == [8, 8, 6]  # 4 shared + 2 + 2; 4 + 2 + 2; 4 + 2
    assert sorted(k for p in packs for k in p.ends) == list(range(5))
    for pack in packs:
        for key, node in pack.ends.items():
            path = [i for i in range(len(pack.tokens)) if pack.ancestry()[node, i]]
            assert [pack.tokens[i] for i in path] == rows[key]
            assert [pack.positions[i] for i in path] == list(range(6))
    texts = [("Instruction:Say a number from one to nine.\n\nResponse:", f" {k} is my number.") for k in range(9)]
    small = Scorer(reward_model, batch_size=4, max_length=64, pack_tokens=16)
    alone = Scorer(reward_model, batch_size=4, max_length=64, share=False)
    assert small(texts) == pytest.approx(alone(texts), abs=1e-5)
    rows = {i: small.tokenizer(p + r)["input_ids"] for i, (p, r) in enumerate(texts)}
    assert len(trie_packs(rows, small.pack_tokens)) > small.batch_size  # padded batches of several packs


# evaluate_models on a small made-up data folder: keys, pooling, paired differences, seeds and the plumbing label.

def _data_dir(root, sources: dict | None = None):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from codepmp.pairs import REASONING_FILES
    from codepmp.reasoning.build import SCHEMAS

    dev, pool, logic = [], [], []
    for p in range(4):
        prompt = f"Instruction:Tom has {p + 2} apples and buys {p + 3} more. How many?\n\nResponse:"
        dev.append({"prompt": prompt, "chosen": f" {p + 2} + {p + 3} = {2 * p + 5}. #### {2 * p + 5}",
                    "rejected": f" {p + 2} + {p + 3} = {2 * p + 6}. #### {2 * p + 6}", "domain": "gsm8k"})
        for k in range(6):
            answer = str(2 * p + 5 + k % 3)
            pool.append({"problem_id": f"g{p}", "candidate": k, "prompt": prompt, "response": f" So #### {answer}",
                         "answer": answer, "gold": str(2 * p + 5), "correct": k % 3 == 0, "domain": "gsm8k"})
    for item in range(3):
        prompt = f"Instruction:Passage {item}: all cats are animals. Which follows?\n\nResponse:"
        options = [f" Option {k}: cats {'are' if k == item % 4 else 'are not'} animals." for k in range(4)]
        dev += [{"prompt": prompt, "chosen": options[item % 4], "rejected": options[k], "domain": "logiqa2"}
                for k in range(4) if k != item % 4]
        logic += [{"item_id": str(item), "option": k, "prompt": prompt, "response": options[k], "gold": item % 4,
                   "domain": "logiqa2"} for k in range(4)]
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("dev", dev), ("pool", pool), ("logic", logic)):
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[name]), root / REASONING_FILES[name])
    if sources is not None:
        (root / "stats.json").write_text(json.dumps({"sources": sources}))
    return root


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: str(write_tiny_model(root / name, reward=True, seed=seed)) for name, seed in (("a", 5), ("b", 6))}


def _evaluate(data_dir, models, **settings):
    from codepmp.config import EvaluateConfig
    from codepmp.evaluate.run import evaluate_models

    cfg = EvaluateConfig(best_of_n=[1, 2, 4], bon_trials=6, max_length=96, bootstrap_resamples=200, **settings)
    return evaluate_models(cfg, models, data_dir)


def test_evaluate_pools_domains_equally_and_pairs_bon_differences(two_models, tmp_path):
    data = _data_dir(tmp_path / "data", {"dev_pairs": "sampled", "pool": "sampled", "train_pairs": "sampled"})
    result = _evaluate(data, {"pmp": two_models["a"], "control": two_models["b"]})
    pmp, diff = result["metrics"]["pmp"], result["differences"]
    domains = result["domains"]
    assert pmp["pairwise_accuracy"] == pytest.approx((pmp["gsm8k.pairwise_accuracy"]
                                                      + pmp["logiqa2.pairwise_accuracy"]) / 2)
    entry = domains["all"]["metrics"]["pairwise_accuracy"]
    assert entry["items"] == 4 + 9 and entry["clusters"] == 4 + 3 and entry["strata"] == ["gsm8k", "logiqa2"]
    assert domains["logiqa2"]["metrics"]["pairwise_accuracy"]["clusters"] == 3  # a logic item's pairs: one cluster
    for key in ("pairwise_accuracy", "gsm8k.pairwise_accuracy", "logiqa2.option_accuracy", "gsm8k.bon4_rm"):
        for flat in (pmp, diff):
            assert flat[f"{key}_ci_low"] <= flat[key] <= flat[f"{key}_ci_high"], key
    for n in (1, 2, 4):
        assert diff[f"gsm8k.bon{n}_rm"] == pytest.approx(pmp[f"gsm8k.bon{n}_rm"]
                                                         - result["metrics"]["control"][f"gsm8k.bon{n}_rm"])
    assert domains["gsm8k"]["best_of_n"]["difference"]["a"] == "pmp"
    assert "plumbing_check" not in result["meta"] and result["meta"]["evaluation seed"] == 0
    assert not any(e.get("plumbing_check") for part in domains.values() for e in part.get("metrics", {}).values())
    assert "plumbing_check" not in domains["gsm8k"]["best_of_n"]

    itself = _evaluate(data, {"pmp": two_models["a"], "control": two_models["a"]})
    assert itself["differences"] and all(value == 0.0 for value in itself["differences"].values())

    # Majority, random and oracle read no scores: the same whichever models are evaluated, in either order.
    baselines = [{label: curve for label, curve in r["domains"]["gsm8k"]["best_of_n"]["curves"].items()
                  if not label.endswith("-rm")} for r in (result, itself, _evaluate(data, {"x": two_models["b"]}))]
    assert baselines[0] == baselines[1] == baselines[2]
    assert all(r["metrics"][m]["gsm8k.bon4_majority"] == pmp["gsm8k.bon4_majority"]
               for r in (result, itself) for m in r["metrics"])

    paper = _evaluate(data, {"pmp": two_models["a"], "control": two_models["b"]}, seed=123)
    assert paper["meta"]["evaluation seed"] == 123
    assert paper["metrics"]["pmp"].keys() == pmp.keys() and paper["differences"].keys() == diff.keys()
    assert paper["metrics"]["pmp"] != pmp  # other draws and resamples
    again = _evaluate(data, {"pmp": two_models["a"], "control": two_models["b"]}, seed=123)
    assert again["metrics"] == paper["metrics"] and again["differences"] == paper["differences"]


def test_corrupted_data_is_labelled_a_plumbing_check(two_models, tmp_path):
    from codepmp.evaluate.run import data_sources

    for sources in (None, {"dev_pairs": "corrupted", "pool": "corrupted", "train_pairs": "corrupted"}):
        data = _data_dir(tmp_path / f"data-{sources is None}", sources)
        assert data_sources(data) == {"dev_pairs": "corrupted", "pool": "corrupted"}
        result = _evaluate(data, {"pmp": two_models["a"]})
        assert result["meta"]["plumbing_check"] == ("dev pairs/pools are corrupted copies of the reference solution: "
                                                    "a plumbing check, not a reward-model metric")
        metrics = {d: part.get("metrics", {}) for d, part in result["domains"].items()}
        assert metrics["all"]["pairwise_accuracy"]["plumbing_check"]
        assert metrics["gsm8k"]["pairwise_accuracy"]["plumbing_check"]
        assert result["domains"]["gsm8k"]["best_of_n"]["plumbing_check"]
        # Logic dev pairs and options are the dataset's own options whatever the mode: no label.
        assert "plumbing_check" not in metrics["logiqa2"]["pairwise_accuracy"]
        assert "plumbing_check" not in metrics["logiqa2"]["option_accuracy"]
    only_pool = _evaluate(_data_dir(tmp_path / "mixed", {"dev_pairs": "sampled", "pool": "corrupted"}),
                          {"pmp": two_models["a"]})
    assert only_pool["meta"]["plumbing_check"].startswith("pools are corrupted copies")
    assert "plumbing_check" not in only_pool["domains"]["gsm8k"]["metrics"]["pairwise_accuracy"]
