"""A killed training run resumes from its last complete checkpoint in the object store and ends where
an uninterrupted run ends."""

import re

import pytest
import torch

from codepmp.config import TrainConfig
from codepmp.storage import ObjectStore
from codepmp.testing import write_tiny_model
from codepmp.train.checkpoint import StoreCheckpointer
from codepmp.train.data import Pair
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
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    kept = {re.search(r"step-\d+", k).group() for k in store.list("runs/resume-test/pretrain/checkpoints/")}
    assert kept == {"step-00000002", "step-00000003"}  # keep=2 pruned step 1
