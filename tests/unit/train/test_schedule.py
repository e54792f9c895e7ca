"""Learning-rate schedules: WSD and cosine shapes, and their relation to transformers' schedules."""

import math

import pytest
import torch

from codepmp.train.schedule import cosine_factor, lr_factor, wsd_factor


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
