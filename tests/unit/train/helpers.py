"""Preference pairs and a training config shared by the train package's tests."""

from codepmp.config import TrainConfig
from codepmp.pairs import Pair


PAIRS = [Pair(f"### Instruction: task {i}\n\n### Response:", f"\ndef f{i}(x):\n    return x + {i}\n",
              f"\nf{i} = None") for i in range(8)]
CFG = TrainConfig(max_length=64, batch_size=2, grad_accum=2, lr=1e-3, warmup_frac=0.25, decay_frac=0.25,
                  log_every=1, seed=0)
