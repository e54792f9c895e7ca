"""Pairs to token ids and batches (codepmp.encoding, train/data.py): response boundaries, truncation, padded,
packed and pair-tree batches that give the same rewards, and clear errors for bad pair files."""

import pytest
import torch

from codepmp.encoding import encode
from codepmp.models import load_reward_model
from codepmp.pairs import Pair
from codepmp.train.data import collate, collate_packed, collate_pair_trees, encode_pairs, length_grouped_batches
from codepmp.train.model import PreferenceModel
from tests.unit.train.helpers import PAIRS


def test_encode_marks_response_boundary(tiny_model):
    _, tokenizer = load_reward_model(tiny_model)
    enc = encode(tokenizer, "prompt:", " response text", max_length=64)
    decoded = tokenizer.decode(enc.ids[enc.response_start:])
    assert decoded.strip() == "response text"
    assert len(encode(tokenizer, "p", "x " * 500, max_length=16).ids) == 16


def test_truncation_keeps_the_prompt_and_cuts_the_end_of_the_response(tiny_model):
    from codepmp.encoding import PromptTooLong

    _, tokenizer = load_reward_model(tiny_model)
    question = "Tom has 3 apples and buys 4 more. How many apples?"
    answer = " He has 3 + 4 = 7 apples. " + "Checking again. " * 40 + "#### 7"
    full = encode(tokenizer, question, answer, 512)
    limit = full.response_start + 8
    cut = encode(tokenizer, question, answer, limit)
    assert len(full.ids) > limit and len(cut.ids) == limit
    assert cut.ids == full.ids[:limit] and cut.response_start == full.response_start
    assert tokenizer.decode(cut.ids[:cut.response_start]) == question  # the whole question is scored
    assert not tokenizer.decode(cut.ids).endswith("#### 7")  # the response's end went
    # A prompt with no room left for a response token is an error naming its length; one token of room is enough.
    prompt_tokens = full.response_start
    with pytest.raises(PromptTooLong, match=f"a prompt of {prompt_tokens} tokens leaves no room .* max_length "
                                            f"{prompt_tokens}"):
        encode(tokenizer, question, answer, max_length=prompt_tokens)
    fits = encode(tokenizer, question, answer, max_length=prompt_tokens + 1)
    assert fits.response_start == prompt_tokens and len(fits.ids) == prompt_tokens + 1


def test_batches_cover_every_pair_once():
    batches = length_grouped_batches([5, 1, 9, 3, 7], batch_size=2, seed=1)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert all(len(b) <= 2 for b in batches)


def test_packed_batch_gives_the_rewards_and_lm_targets_of_the_padded_batch(tiny_model):
    model = PreferenceModel.load(tiny_model, with_lm_head=True).eval()
    # Unequal lengths, so the padded batch has padding and the packed row has sequence boundaries.
    pairs = [PAIRS[0], Pair("Q:", " a much longer answer " * 4, " no"), PAIRS[5]]
    encoded = encode_pairs(model.tokenizer, pairs, 64)
    padded = collate(encoded, model.reward_model.config.pad_token_id)
    packed = collate_packed(encoded)
    assert packed["input_ids"].shape == (1, int(padded["attention_mask"].sum()))
    with torch.no_grad():
        rewards, logits, targets = model(padded["input_ids"], padded["attention_mask"], lm_labels=padded["labels"])
        packed_rewards, packed_logits, packed_targets = model(
            packed["input_ids"], lm_labels=packed["labels"], position_ids=packed["position_ids"],
            last=packed["last"])
    torch.testing.assert_close(packed_rewards, rewards, rtol=1e-4, atol=1e-5)
    assert packed_targets.tolist() == targets.tolist()
    torch.testing.assert_close(packed_logits, logits, rtol=1e-4, atol=1e-4)
    # Position ids restart per sequence; without them the packed row is one long causal sequence.
    with torch.no_grad():
        leaky, _, _ = model(packed["input_ids"], lm_labels=None, last=packed["last"],
                            position_ids=torch.arange(packed["input_ids"].size(1))[None])
    assert not torch.allclose(leaky[1:], rewards[1:], atol=1e-3)


# Pairs whose two sides share the prompt and more (a corrupted copy), end inside each other, or share nothing.
TREE_PAIRS = [PAIRS[0], Pair("Q: 3 + 4?", " 3 + 4 = 7. The answer is 7", " 3 + 4 = 7. The answer is 8"),
              Pair("Q:", " a much longer answer " * 4, " a much"), Pair("Q:", " short", " short and then more"),
              Pair("", "abc", "xyz")]


def _padded_and_tree_batches(model, pairs):
    encoded = encode_pairs(model.tokenizer, pairs, 64)
    return encoded, collate(encoded, model.reward_model.config.pad_token_id), collate_pair_trees(
        encoded, model.reward_model.config.pad_token_id)


def test_pair_trees_give_the_rewards_lm_targets_and_gradients_of_the_padded_batch(tiny_model):
    model = PreferenceModel.load(tiny_model, with_lm_head=True).eval()
    encoded, padded, trees = _padded_and_tree_batches(model, TREE_PAIRS)
    # Each shared token runs once: a row per pair, as long as the chosen side plus the rejected side's own part.
    shared = [next((i for i, (a, b) in enumerate(zip(c.ids, r.ids)) if a != b), min(len(c.ids), len(r.ids)))
              for c, r in encoded]
    assert trees["input_ids"].shape == (len(TREE_PAIRS), max(len(c.ids) + len(r.ids) - k
                                                             for (c, r), k in zip(encoded, shared)))
    results = []
    for batch in (padded, trees):
        model.zero_grad()
        rewards, logits, targets = model(batch["input_ids"], batch.get("attention_mask"), lm_labels=batch["labels"],
                                         position_ids=batch.get("position_ids"), last=batch.get("last"),
                                         tree_mask=batch.get("tree_mask"))
        n = len(TREE_PAIRS)
        (-torch.nn.functional.logsigmoid(rewards[:n] - rewards[n:]).mean()
         + torch.nn.functional.cross_entropy(logits, targets)).backward()
        results.append((rewards.detach(), logits.detach(), targets,
                        {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
    (rewards, logits, targets, grads), (tree_rewards, tree_logits, tree_targets, tree_grads) = results
    torch.testing.assert_close(tree_rewards, rewards, rtol=1e-4, atol=1e-5)
    assert tree_targets.tolist() == targets.tolist()
    torch.testing.assert_close(tree_logits, logits, rtol=1e-4, atol=1e-4)
    assert grads.keys() == tree_grads.keys() and len(grads) > 2
    for name in grads:
        torch.testing.assert_close(tree_grads[name], grads[name], rtol=1e-3, atol=1e-6, msg=name)
    # Without the tree mask the rejected branch would see the chosen one and read other rewards.
    with torch.no_grad():
        leaky, _, _ = model(trees["input_ids"], position_ids=trees["position_ids"], last=trees["last"])
    assert not torch.allclose(leaky[len(TREE_PAIRS):], rewards[len(TREE_PAIRS):], atol=1e-3)


def test_pair_tree_rows_hold_each_shared_token_once(tiny_model):
    _, tokenizer = load_reward_model(tiny_model)
    chosen, rejected = encode_pairs(tokenizer, [TREE_PAIRS[1]], 64)[0]
    trees = collate_pair_trees([(chosen, rejected)], 0)
    split = next(i for i, (a, b) in enumerate(zip(chosen.ids, rejected.ids)) if a != b)
    assert split > chosen.response_start  # the corrupted copy shares part of its response
    assert trees["input_ids"][0].tolist() == chosen.ids + rejected.ids[split:]
    assert trees["position_ids"][0].tolist() == list(range(len(chosen.ids))) + list(range(split, len(rejected.ids)))
    branch = len(chosen.ids)
    mask = trees["tree_mask"][0]
    assert mask[branch, :split].all() and not mask[branch, split:branch].any() and mask[branch, branch]
    assert trees["last"].tolist() == [[0, len(chosen.ids) - 1], [0, trees["input_ids"].size(1) - 1]]


def test_pair_files_with_wrong_columns_types_or_nulls_are_clear_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from codepmp.errors import InputError
    from codepmp.synthesize.run import read_pairs

    def write(rows, schema=None):
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "pairs.parquet")

    with pytest.raises(InputError, match="no pairs.parquet in .*run the synthesize stage first"):
        read_pairs(tmp_path)
    write([{"description": "d", "chosen": "c", "reject": "r"}])
    with pytest.raises(InputError, match="has no column 'rejected' \\(columns: description, chosen, reject\\)"):
        read_pairs(tmp_path)
    write([{"description": "d", "chosen": 1, "rejected": "r"}])
    with pytest.raises(InputError, match="column 'chosen' must hold strings, not int64"):
        read_pairs(tmp_path)
    write([{"description": "d", "chosen": "c", "rejected": "r"}, {"description": "d", "chosen": None, "rejected": "r"}],
          pa.schema([("description", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())]))
    with pytest.raises(InputError, match="row 1 has a null in \\['chosen'\\]"):
        read_pairs(tmp_path)
    (tmp_path / "pairs.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="is not a readable Parquet file"):
        read_pairs(tmp_path)
