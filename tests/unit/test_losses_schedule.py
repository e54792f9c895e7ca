import math

import pytest
import torch

from codepmp.train.losses import last_token_index, lm_loss, next_token_targets, pairwise_loss, pmp_loss
from codepmp.train.schedule import cosine_factor, lr_factor, wsd_factor


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


def test_wsd_schedule_shape():
    total = 100
    factors = [wsd_factor(s, total, warmup_frac=0.03, decay_frac=0.1) for s in range(total)]
    assert factors[0] == pytest.approx(1 / 3) and factors[2] == 1.0
    assert all(f == 1.0 for f in factors[3:90])
    assert factors[90] == pytest.approx(0.9) and factors[-1] == 0.0
    assert all(a >= b for a, b in zip(factors[90:], factors[91:]))
    with pytest.raises(ValueError):
        wsd_factor(0, 0, 0.03, 0.1)


def test_cosine_schedule_warms_up_then_follows_a_half_cosine_to_zero():
    total = 100
    factors = [lr_factor("cosine", s, total, warmup_frac=0.1, decay_frac=0.5) for s in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert factors[9 + 45] == pytest.approx(0.5)  # halfway through the 90 cosine steps
    assert factors[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert cosine_factor(10, total, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 90)))
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_factor("linear", 0, total, 0.1, 0.1)


@pytest.mark.parametrize("total,warmup_frac,decay_frac", [(40, 0.1, 0.25), (100, 0.03, 0.1), (7, 0.3, 0.3)])
def test_schedules_are_transformers_schedules_one_step_earlier(total, warmup_frac, decay_frac):
    """The relation the schedule module documents: factor(s) == transformers' factor(s + 1)."""
    from transformers import get_cosine_schedule_with_warmup, get_wsd_schedule

    from codepmp.train.schedule import _warmup_steps

    warmup, decay = _warmup_steps(total, warmup_frac), round(decay_frac * total)

    def factors(make) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler, out = make(optimizer), []
        for _ in range(total + 1):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    wsd = factors(lambda o: get_wsd_schedule(o, num_warmup_steps=warmup, num_decay_steps=decay,
                                             num_training_steps=total, decay_type="linear"))
    cosine = factors(lambda o: get_cosine_schedule_with_warmup(o, warmup, total))
    assert [wsd_factor(s, total, warmup_frac, decay_frac) for s in range(total)] == pytest.approx(wsd[1:])
    assert [cosine_factor(s, total, warmup_frac) for s in range(total)] == pytest.approx(cosine[1:])
