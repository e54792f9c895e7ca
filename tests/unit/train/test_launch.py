"""Launching training in processes of its own: two ranks through DeepSpeed on CPU, errors carried back."""

import pytest
import torch

from codepmp.config import TrainConfig
from codepmp.models import load_reward_model
from codepmp.pairs import Pair
from codepmp.train.loop import train
from tests.unit.train.helpers import CFG, PAIRS


TWO_RANK_SCRIPT = """
import json, sys
from codepmp.config import TrainConfig
from codepmp.pairs import Pair
from codepmp.train.loop import train

model, out, stage = sys.argv[1], sys.argv[2], int(sys.argv[3])
pairs = [Pair(f"### Instruction: task {i}\\n\\n### Response:", f"\\ndef f{i}(x):\\n    return x + {i}\\n",
              f"\\nf{i} = None") for i in range(8)]
cfg = TrainConfig(max_length=64, batch_size=2, grad_accum=1, lr=1e-3, warmup_frac=0.25, decay_frac=0.25,
                  log_every=1, seed=0, deepspeed_stage=stage)
losses = []
summary = train(cfg, model, pairs, out, log=lambda m, s: losses.append(m["loss"]), progress=False)
if losses:
    print("LOSSES " + json.dumps({"losses": losses, "summary": summary}), flush=True)
"""


def test_two_process_zero2_run_on_cpu_matches_one_process(tiny_model, tmp_path, stage=2):
    """2 processes (torchrun, gloo) x 1 micro-batch of 2 pairs per step = 1 process x 2 micro-batches."""
    import json
    import os
    import socket
    import subprocess
    import sys

    one = []
    cfg = TrainConfig(**{**CFG.__dict__, "deepspeed_stage": stage})
    train(cfg, tiny_model, PAIRS, tmp_path / "one", log=lambda m, s: one.append(m["loss"]), progress=False)

    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANK_SCRIPT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), str(script), tiny_model,
                           str(tmp_path / "two"), str(stage)],
                          capture_output=True, text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("LOSSES ")]
    assert proc.returncode == 0 and len(lines) == 1, proc.stderr[-3000:]  # only rank 0 logs
    result = json.loads(lines[0].removeprefix("LOSSES "))
    assert result["summary"]["processes"] == 2 and result["summary"]["steps"] == 2
    assert result["losses"] == pytest.approx(one, rel=1e-3)
    two, single = load_reward_model(str(tmp_path / "two"))[0], load_reward_model(str(tmp_path / "one"))[0]
    for (name, a), b in zip(two.state_dict().items(), single.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)


def test_bad_input_in_a_launched_process_is_the_stage_error(tiny_model, tmp_path):
    from codepmp.errors import InputError
    from codepmp.train.launch import launch

    cfg = TrainConfig(**{**CFG.__dict__, "deepspeed_stage": 2, "processes": 2})
    blank = [Pair(p.prompt, " ", p.rejected) for p in PAIRS]
    with pytest.raises(InputError, match="none of the 8 training pairs is usable at max_length 64: empty_response 8"):
        launch(cfg, tiny_model, blank, tmp_path / "out", checkpoints=None)
    assert not (tmp_path / "out").exists()
