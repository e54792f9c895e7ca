"""Run a training stage in this process, or as one process per GPU of the pod with torchrun.

The pretrain and finetune stages call `launch`. With one process (CPU, one GPU, or a process that a
launcher already started, e.g. a Kubeflow Trainer node) it calls `train` here; otherwise it writes a
`TrainSpec`, starts `torchrun --nproc_per_node N` on this module and waits. Every process trains its share
of each step; rank 0 alone logs to the stage's MLflow run, saves the model and writes the summary.

    python -m torch.distributed.run --nproc_per_node 8 -m codepmp.train.launch spec.json   # or s3://.../spec.json
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codepmp.config import TrainConfig
from codepmp import errors
from codepmp.errors import CodepmpError, ConfigError, ServiceError
from codepmp.pairs import Pair

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

    # Already one of several launched processes (a TrainJob node runs `run_spec` itself): train here. A
    # WORLD_SIZE of 1 is what an earlier in-process DeepSpeed run leaves behind, not a launcher.
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or (count := processes(cfg)) == 1:
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
            raise recorded_error(json.loads((Path(tmp) / "error.json").read_text()))
        if code != 0:
            raise ServiceError(f"the {count} training processes failed with exit code {code} (see the log above)")
        return json.loads((Path(tmp) / "summary.json").read_text())


def recorded_error(error: dict) -> CodepmpError:
    """The error that rank 0 of a launched run recorded (see `main`), to raise in the stage: it fails with the
    same clear message and type as a single-process run would."""
    return getattr(errors, error["type"], CodepmpError)(error["message"])


def run_spec(spec: TrainSpec) -> dict:
    """One torchrun process: train on the spec's pairs; rank 0 logs, saves the model and writes the summary.
    `pairs`, `out_dir` and `summary` may be s3:// (a TrainJob's nodes share no disk with the pipeline)."""
    from codepmp.tracking import MetricBuffer, retry_window
    from codepmp.pairs import read_text_rows
    from codepmp.train.loop import train

    rank = int(os.environ.get("RANK", "0"))
    cfg = TrainConfig(**spec.config)
    with tempfile.TemporaryDirectory(prefix="codepmp-train-") as tmp:
        pairs_file = _object(spec.pairs).get_file(_key(spec.pairs), Path(tmp) / "pairs.parquet") \
            if spec.pairs.startswith("s3://") else spec.pairs
        rows = read_text_rows(pairs_file, ["prompt", "chosen", "rejected"], "written by the launching stage")
        resumable, scaling = Checkpoints(**spec.checkpoints).open() if spec.checkpoints else (None, None)
        metrics = MetricBuffer(spec.mlflow_run_id, spec.tracking_uri) if rank == 0 and spec.mlflow_run_id else None
        log = metrics.log if metrics else (lambda values, step: None)
        remote_out = spec.out_dir.startswith("s3://")
        out_dir = Path(tmp) / "model" if remote_out else spec.out_dir
        summary = train(cfg, spec.init_model, [Pair(**row) for row in rows], out_dir, checkpointer=resumable,
                        scaling=scaling, log=log, progress=rank == 0)
        if metrics:
            metrics.flush(retry_window())
        if rank == 0:
            from codepmp.atomic import write_json

            if remote_out:
                store = _object(spec.out_dir)
                store.upload_dir(out_dir, _key(spec.out_dir))
                store.mark_done(_key(spec.out_dir), {"steps": summary["steps"]})
            if spec.summary.startswith("s3://"):
                _object(spec.summary).put_json(_key(spec.summary), summary)
            else:
                write_json(summary, spec.summary)
    return summary


def _object(uri: str):
    """The object store holding `uri` (its bucket)."""
    from codepmp.storage import ObjectStore, parse_s3_uri

    return ObjectStore.from_env(bucket=parse_s3_uri(uri)[0])


def _key(uri: str) -> str:
    from codepmp.storage import parse_s3_uri

    return parse_s3_uri(uri)[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m codepmp.train.launch SPEC.json|s3://.../spec.json (under torchrun)")
    location = sys.argv[1]
    remote = location.startswith("s3://")
    try:
        spec = _object(location).get_json(_key(location)) if remote else json.loads(Path(location).read_text())
        run_spec(TrainSpec(**spec))
    except CodepmpError as exc:
        # Every rank sees the same bad input, and each records it: torchrun stops the other processes as soon
        # as the first one exits, so only the first to fail is sure to finish writing.
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"codepmp train: error: {exc}", file=sys.stderr, flush=True)
        error = {"type": type(exc).__name__, "message": str(exc)}
        if remote:
            _object(location).put_json(_key(location).rsplit("/", 1)[0] + "/error.json", error)
        else:
            from codepmp.atomic import write_json

            write_json(error, Path(location).parent / "error.json")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
