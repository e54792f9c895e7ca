"""Scoring: sharing a prompt's forward pass across its candidates gives the rewards of scoring each alone."""

import pytest

from codepmp.evaluate.run import Scorer
from codepmp.testing import write_tiny_model


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    return str(write_tiny_model(tmp_path_factory.mktemp("rm") / "model", reward=True, seed=4))


def test_shared_prompt_scores_equal_one_at_a_time_scores(reward_model):
    question = "Instruction:Tom has 3 apples and buys 4 more. How many apples does he have now?\n\nResponse:"
    texts = [(question, f" {3 + k} apples. #### {3 + k}" + " because" * k) for k in range(7)]
    texts += [("Instruction:hi\n\nResponse:", " 1"), ("Instruction:hi\n\nResponse:", " 2")]  # too short to share
    texts += [("Instruction:A lone question with one candidate only\n\nResponse:", " yes")]
    shared = Scorer(reward_model, batch_size=3, max_length=64)
    alone = Scorer(reward_model, batch_size=1, max_length=64, share_prompts=False)
    assert shared(texts) == pytest.approx(alone(texts), abs=1e-5)
    # The question is encoded once per batch of its candidates, not once per candidate.
    calls = []
    original = shared._prefix_cache
    shared._prefix_cache = lambda prefix, copies: calls.append(copies) or original(prefix, copies)
    shared(texts)
    assert calls == [3, 3, 1]
