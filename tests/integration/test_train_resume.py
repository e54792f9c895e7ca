"""A killed training run resumes from its last complete checkpoint in the object store and ends where
an uninterrupted run ends."""

import re

import pytest
import torch

from codepmp.config import TrainConfig
from codepmp.storage import ObjectStore
from codepmp.testing import write_tiny_model
from codepmp.train.checkpoint import StoreCheckpointer
from codepmp.pairs import Pair
from codepmp.train.loop import train

PAIRS = [Pair(f"Q{i}:", f" good answer {i}", f" bad {i}") for i in range(8)]
CFG = TrainConfig(max_length=32, batch_size=2, grad_accum=1, lr=1e-3, log_every=1, checkpoint_every=1, seed=3)


class Killed(Exception):
    pass


def _kill_at(step_to_die: int):
    def log(metrics, step):
        if step == step_to_die:
            raise Killed

    return log


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


@pytest.mark.integration
def test_resume_after_kill_matches_uninterrupted_run(stack_env, tmp_path):
    model = str(write_tiny_model(tmp_path / "base"))
    store = ObjectStore.from_env()
    store.ensure_bucket()

    straight = train(CFG, model, PAIRS, tmp_path / "straight", progress=False)

    checkpointer = StoreCheckpointer(store, "runs/resume-test/pretrain/checkpoints", keep=2)
    with pytest.raises(Killed):
        # Dies after logging step 3, before its checkpoint: steps 1 and 2 are saved and marked.
        train(CFG, model, PAIRS, tmp_path / "killed", checkpointer=checkpointer, log=_kill_at(3), progress=False)
    assert checkpointer.latest() == 2
    assert not (tmp_path / "killed").exists()  # no half-finished model folder

    resumed = train(CFG, model, PAIRS, tmp_path / "resumed", checkpointer=checkpointer, progress=False)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == straight["steps"] == 4
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-5)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bitwise on CPU with a fixed seed
    kept = {re.search(r"step-\d+", k).group() for k in store.list("runs/resume-test/pretrain/checkpoints/")}
    assert kept == {"step-00000002", "step-00000003"}  # keep=2 pruned step 1


@pytest.mark.integration
def test_scaling_curve_checkpoints_then_decay_one_of_them(stack_env, tmp_path):
    """A WSD run saves checkpoints at geometric steps of its stable phase; a second run decays one of them."""
    from codepmp.errors import InputError
    from codepmp.train.schedule import scaling_steps

    model = str(write_tiny_model(tmp_path / "base"))
    store = ObjectStore.from_env()
    store.ensure_bucket()
    pairs = [Pair(f"Q{i}:", f" good answer {i}", f" bad {i}") for i in range(24)]
    cfg = TrainConfig(max_length=32, batch_size=2, grad_accum=1, lr=1e-3, warmup_frac=0.1, decay_frac=0.25,
                      scaling_ratio=1.5, log_every=1, seed=3)
    assert scaling_steps(12, 0.1, 0.25, 1.5) == [1, 2, 3, 4, 6, 9]
    scaling = StoreCheckpointer(store, "runs/scaling-test/pretrain/scaling", keep=0)
    full = train(cfg, model, pairs, tmp_path / "full", scaling=scaling, progress=False)
    assert full["steps"] == 12 and scaling.steps() == [1, 2, 3, 4, 6, 9]

    lrs: list[tuple[int, float]] = []
    decayed_cfg = TrainConfig(**{**cfg.__dict__, "scaling_ratio": 0.0, "decay_from_step": 6})
    decayed = train(decayed_cfg, model, pairs, tmp_path / "decayed", scaling=scaling,
                    log=lambda m, s: lrs.append((s, m["lr"])), progress=False)
    # 6 * 0.25 / 0.75 = 2 decay steps: lr 1e-3 * 1/2 at step 7, then 0 after step 8.
    assert decayed["resumed_from"] == 6 and decayed["steps"] == 8
    assert [s for s, _ in lrs] == [7, 8] and lrs[-1][1] == 0.0
    assert scaling.steps() == [1, 2, 3, 4, 6, 9]  # decaying does not touch the saved curve
    assert any(not torch.equal(a, b) for a, b in zip(_weights(tmp_path / "decayed").values(),
                                                      _weights(tmp_path / "full").values()))
    with pytest.raises(InputError, match="no scaling-curve checkpoint at step 5 .*saved: \\[1, 2, 3, 4, 6, 9\\]"):
        train(TrainConfig(**{**decayed_cfg.__dict__, "decay_from_step": 5}), model, pairs, tmp_path / "x",
              scaling=scaling, progress=False)
