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
    shared = Scorer(reward_model, batch_size=3, max_length=256)
    alone = Scorer(reward_model, batch_size=1, max_length=256, share_prompts=False)
    assert shared(texts) == pytest.approx(alone(texts), abs=1e-5)
    # The question is encoded once; candidates that agree on a longer start share that too.
    extensions = []
    original = shared._extend
    shared._extend = lambda cache, tokens, start: extensions.append((start, len(tokens))) or original(cache, tokens,
                                                                                                      start)
    shared(texts)
    assert [start for start, _ in extensions] == [0]


def test_candidates_sharing_a_long_start_share_its_pass_too(reward_model):
    question = "Instruction:What is 12 times 3, then plus 5?\n\nResponse:"
    steps = " First, 12 times 3 is 36, because twelve threes make thirty-six."
    texts = [(question, steps + f" Then 36 plus 5 is {41 + k}. #### {41 + k}") for k in range(3)]
    texts += [(question, f" I think the answer is {k}.") for k in range(2)]
    shared = Scorer(reward_model, batch_size=4, max_length=256)
    alone = Scorer(reward_model, batch_size=1, max_length=256, share_prompts=False)
    extensions = []
    original = shared._extend
    shared._extend = lambda cache, tokens, start: extensions.append(start) or original(cache, tokens, start)
    assert shared(texts) == pytest.approx(alone(texts), abs=1e-5)
    assert len(extensions) == 2 and extensions[0] == 0 and extensions[1] > 0  # the question, then the shared step
