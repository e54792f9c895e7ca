"""Run a training stage in this process, or as one process per GPU of the pod with torchrun.

The pretrain and finetune stages call `launch`. With one process (CPU, one GPU, or a process that a
launcher already started, e.g. a Kubeflow Trainer node) it calls `train` here; otherwise it writes a
`TrainSpec`, starts `torchrun --nproc_per_node N` on this module and waits. Every process trains its share
of each step; rank 0 alone logs to the stage's MLflow run, saves the model and writes the summary.

    python -m torch.distributed.run --nproc_per_node 8 -m codepmp.train.launch spec.json
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codepmp.config import TrainConfig
from codepmp import errors
from codepmp.errors import CodepmpError, ConfigError, ServiceError
from codepmp.train.data import Pair

LAUNCHED_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


@dataclass
class Checkpoints:
    """Where a run's resumable and scaling-curve checkpoints live in the object store (see `open`)."""

    run_name: str
    job_id: str
    """Pipeline job id: resumable checkpoints are scoped to it, so only a retried pod of the job resumes."""
    name: str
    """Stage name under the run: "pretrain", "pretrain-decay-<step>", "finetune-<variant>"."""
    scaling: str = ""
    """Stage name whose scaling-curve checkpoints this run saves or decays; "" for none."""

    def open(self):
        """(resumable checkpointer, scaling-curve checkpointer or None)."""
        from codepmp.storage import ObjectStore
        from codepmp.train.checkpoint import StoreCheckpointer

        store = ObjectStore.from_env()
        store.ensure_bucket()
        scope = f"{self.run_name}/{self.job_id}" if self.job_id else self.run_name
        resumable = StoreCheckpointer(store, f"runs/{scope}/{self.name}/checkpoints")
        # Scaling-curve checkpoints belong to the run name and are all kept: a later run with
        # `decay_from_step` and the same run name decays one of them.
        scaling = StoreCheckpointer(store, f"runs/{self.run_name}/{self.scaling}/scaling", keep=0) \
            if self.scaling else None
        return resumable, scaling


@dataclass
class TrainSpec:
    """Everything a training process needs, as JSON: what torchrun's processes read."""

    config: dict
    """TrainConfig fields."""
    init_model: str
    pairs: str
    """Parquet file with prompt, chosen and rejected columns."""
    out_dir: str
    summary: str
    """Where rank 0 writes the run summary (JSON)."""
    checkpoints: dict = field(default_factory=dict)
    """`Checkpoints` fields; empty for a run without checkpoints."""
    tracking_uri: str = ""
    mlflow_run_id: str = ""
    """The stage's MLflow run, which rank 0 logs the step metrics to; "" logs nowhere."""


def processes(cfg: TrainConfig) -> int:
    """Training processes for this pod: `cfg.processes`, or with 0 one per visible GPU (1 without GPUs)."""
    import torch

    count = cfg.processes or max(torch.cuda.device_count(), 1)
    if count > 1 and cfg.deepspeed_stage < 0:
        raise ConfigError(f"training would run {count} processes (processes={cfg.processes}, "
                          f"{torch.cuda.device_count()} GPUs) but deepspeed_stage is {cfg.deepspeed_stage}: data-parallel "
                          "training runs through DeepSpeed, so set deepspeed_stage to 0-3 or processes to 1")
    return count


def launch(cfg: TrainConfig, init_model: str, pairs: list[Pair], out_dir: str | Path,
           checkpoints: Checkpoints | None, log=lambda metrics, step: None) -> dict:
    """Train on `pairs` (see `loop.train`) with `processes(cfg)` processes and return rank 0's summary."""
    from codepmp.train.loop import train

    if "WORLD_SIZE" in os.environ or (count := processes(cfg)) == 1:
        resumable, scaling = checkpoints.open() if checkpoints else (None, None)
        return train(cfg, init_model, pairs, out_dir, checkpointer=resumable, scaling=scaling, log=log)
    import mlflow
    import pyarrow as pa

    from codepmp.atomic import write_table

    with tempfile.TemporaryDirectory(prefix="codepmp-launch-") as tmp:
        write_table(pa.Table.from_pylist([asdict(p) for p in pairs]), Path(tmp) / "pairs.parquet")
        run = mlflow.active_run()
        spec = TrainSpec(config=asdict(cfg), init_model=str(init_model), pairs=str(Path(tmp) / "pairs.parquet"),
                         out_dir=str(out_dir), summary=str(Path(tmp) / "summary.json"),
                         checkpoints=asdict(checkpoints) if checkpoints else {},
                         tracking_uri=mlflow.get_tracking_uri() if run else "",
                         mlflow_run_id=run.info.run_id if run else "")
        (Path(tmp) / "spec.json").write_text(json.dumps(asdict(spec)))
        env = {k: v for k, v in os.environ.items() if k not in LAUNCHED_VARS}
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(count),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                   "-m", "codepmp.train.launch", str(Path(tmp) / "spec.json")]
        print(f"[train] starting {count} processes: {' '.join(command[2:])}", flush=True)
        code = subprocess.run(command, env=env).returncode
        if (Path(tmp) / "error.json").exists():
            # Rank 0 stopped on bad input or config: the stage fails with that same clear error.
            error = json.loads((Path(tmp) / "error.json").read_text())
            raise getattr(errors, error["type"], CodepmpError)(error["message"])
        if code != 0:
            raise ServiceError(f"the {count} training processes failed with exit code {code} (see the log above)")
        return json.loads((Path(tmp) / "summary.json").read_text())


def run_spec(spec: TrainSpec) -> dict:
    """One torchrun process: train on the spec's pairs; rank 0 logs, and writes the summary."""
    from codepmp.train.data import read_text_rows
    from codepmp.train.loop import train

    rank = int(os.environ.get("RANK", "0"))
    cfg = TrainConfig(**spec.config)
    rows = read_text_rows(spec.pairs, ["prompt", "chosen", "rejected"], "written by the launching stage")
    pairs = [Pair(**row) for row in rows]
    resumable, scaling = Checkpoints(**spec.checkpoints).open() if spec.checkpoints else (None, None)
    log = _rank0_mlflow_log(spec) if rank == 0 and spec.mlflow_run_id else (lambda metrics, step: None)
    summary = train(cfg, spec.init_model, pairs, spec.out_dir, checkpointer=resumable, scaling=scaling, log=log,
                    progress=rank == 0)
    if rank == 0:
        from codepmp.atomic import write_json

        write_json(summary, spec.summary)
    return summary


def _rank0_mlflow_log(spec: TrainSpec):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=spec.tracking_uri)

    def log(metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        client.log_batch(spec.mlflow_run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    return log


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m codepmp.train.launch SPEC.json (under torchrun)")
    spec_path = Path(sys.argv[1])
    try:
        run_spec(TrainSpec(**json.loads(spec_path.read_text())))
    except CodepmpError as exc:
        # Every rank sees the same bad input; rank 0 tells the launching stage what it was.
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"codepmp train: error: {exc}", file=sys.stderr, flush=True)
            (spec_path.parent / "error.json").write_text(json.dumps({"type": type(exc).__name__,
                                                                      "message": str(exc)}))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
