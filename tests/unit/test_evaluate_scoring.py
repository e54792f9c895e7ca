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
