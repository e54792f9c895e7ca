"""The PMP losses against hand computation: pairwise (Bradley-Terry), LM over labelled tokens, their mix."""

import math

import pytest
import torch

from codepmp.train.losses import last_token_index, lm_loss, next_token_targets, pairwise_loss, pmp_loss


def test_pairwise_loss_matches_hand_computation():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # -log sigmoid(1) = log(1 + e^-1); -log sigmoid(-1) = log(1 + e)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_lm_loss_counts_only_labelled_tokens():
    labels = torch.tensor([[-100, 2, -100], [-100, -100, 1]])
    keep, targets = next_token_targets(labels)
    # Position t predicts token t+1: row 0 position 0 and row 1 position 1.
    assert keep.tolist() == [[True, False], [False, True]] and targets.tolist() == [2, 1]
    logits = torch.zeros(2, 4)
    logits[0, 2] = 1.0
    expected = (-math.log(math.e / (math.e + 3)) + math.log(4)) / 2
    assert lm_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_pmp_loss_combines_coefficients():
    chosen, rejected = torch.tensor([1.0]), torch.tensor([0.0])
    logits, targets = torch.zeros(1, 4), torch.tensor([1])
    total, parts = pmp_loss(chosen, rejected, logits, targets, rm_coef=0.5, lm_coef=2.0)
    expected = 0.5 * math.log(1 + math.exp(-1)) + 2.0 * math.log(4)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert parts["accuracy"] == 1.0 and "lm_loss" in parts
    _, bt_only = pmp_loss(chosen, rejected, None, None, rm_coef=1.0, lm_coef=0.0)
    assert "lm_loss" not in bt_only


def test_last_token_index_skips_right_padding():
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 0, 6, 7, 8]])
    assert last_token_index(ids, pad_token_id=0).tolist() == [2, 4]
