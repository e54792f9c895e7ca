import math

import pytest
import torch

from codepmp.train.losses import last_token_index, lm_loss, pairwise_loss, pmp_loss
from codepmp.train.schedule import wsd_factor


def test_pairwise_loss_matches_hand_computation():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # -log sigmoid(1) = log(1 + e^-1); -log sigmoid(-1) = log(1 + e)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_lm_loss_counts_only_labelled_tokens():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 1.0  # position 0 predicts token at position 1
    labels = torch.tensor([[-100, 2, -100]])
    expected = -math.log(math.e / (math.e + 3))
    assert lm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_pmp_loss_combines_coefficients():
    chosen, rejected = torch.tensor([1.0]), torch.tensor([0.0])
    logits = torch.zeros(1, 2, 4)
    labels = torch.tensor([[-100, 1]])
    total, parts = pmp_loss(chosen, rejected, logits, labels, rm_coef=0.5, lm_coef=2.0)
    expected = 0.5 * math.log(1 + math.exp(-1)) + 2.0 * math.log(4)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert parts["accuracy"] == 1.0 and "lm_loss" in parts
    _, bt_only = pmp_loss(chosen, rejected, None, None, rm_coef=1.0, lm_coef=0.0)
    assert "lm_loss" not in bt_only


def test_last_token_index_skips_right_padding():
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 0, 6, 7, 8]])
    assert last_token_index(ids, pad_token_id=0).tolist() == [2, 4]


def test_wsd_schedule_shape():
    total = 100
    factors = [wsd_factor(s, total, warmup_frac=0.03, decay_frac=0.1) for s in range(total)]
    assert factors[0] == pytest.approx(1 / 3) and factors[2] == 1.0
    assert all(f == 1.0 for f in factors[3:90])
    assert factors[90] == pytest.approx(0.9) and factors[-1] == 0.0
    assert all(a >= b for a, b in zip(factors[90:], factors[91:]))
    with pytest.raises(ValueError):
        wsd_factor(0, 0, 0.03, 0.1)
