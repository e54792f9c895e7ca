"""Pipeline stages as plain functions over local folders: what KFP components and the CLI both call.

Each stage loads its config from (profile, overrides), runs inside one MLflow run tagged with the
pipeline run name, logs its wall time and results, and turns a `CodepmpError` into one line on stderr
and exit code 2 (no stack trace for bad input).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from codepmp.config import PipelineConfig, load_config
from codepmp.errors import CodepmpError


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """A stage as the CLI, the run summary and the pipeline read it from the registry (`STAGES`)."""

    name: str
    section: str = ""
    """Config section whose values the stage's MLflow run records as params ("": the base model only)."""
    gpu: bool = False
    """Its pipeline tasks request a GPU on a cluster."""
    cached: bool = False
    """KFP may reuse an earlier result of a task with the same inputs: only for a pure function of the profile
    and its inputs, not for stages whose work lives outside KFP's cache (object-store markers, checkpoints,
    MLflow runs, the registry)."""
    cli: tuple[str, ...] = ()
    """The folder options of its `codepmp <name>` subcommand (none: no subcommand)."""
    from_cli: Callable[[dict], dict] | None = None
    """The stage's keyword arguments from the subcommand's options, where they are not those options as named."""


STAGES: dict[str, StageSpec] = {}
"""Every stage by name, in pipeline order (the order of the definitions below)."""


def stage(name: str, **spec: Any) -> Callable:
    """Register a stage (`StageSpec` fields as keywords) and decorate `fn(cfg, run_name, **kwargs) -> dict`;
    the wrapper takes (profile, overrides, run_name, **kwargs)."""
    STAGES[name] = StageSpec(name, **spec)

    def wrap(fn: Callable[..., dict]) -> Callable[..., dict]:
        @functools.wraps(fn)
        def run_stage(profile: str, overrides: dict | None, run_name: str, **kwargs: Any) -> dict:
            from codepmp import tracking

            try:
                cfg = load_config(profile, overrides)
                params = {"profile": profile, **_section_params(cfg, STAGES[name].section)}
                with tracking.stage_run(cfg.experiment, name, run_name, params):
                    start = time.perf_counter()
                    result = fn(cfg, run_name, **kwargs)
                    result["wall_s"] = round(time.perf_counter() - start, 2)
                    _log_result(result)
                print(f"[{name}] done in {result['wall_s']:.1f}s: "
                      + ", ".join(f"{k}={v}" for k, v in result.items() if isinstance(v, (int, float, str))),
                      flush=True)
                return result
            except CodepmpError as exc:
                print(f"codepmp {name}: error: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None

        return run_stage

    return wrap


def _log_result(result: dict) -> None:
    """Numbers become run metrics (the summary table reads wall_s from here), strings become tags."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in result.items() if isinstance(v, (int, float))})
    mlflow.set_tags({f"codepmp.{k}": v for k, v in result.items() if isinstance(v, str)})


def _section_params(cfg: PipelineConfig, section: str) -> dict:
    params = {"base_model": cfg.base_model}
    if section:
        params.update(_flatten(dataclasses.asdict(getattr(cfg, section)), section))
    return params


def _flatten(values: dict, prefix: str) -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = value
    return out


def _mlflow_log(metrics: dict, step: int) -> None:
    from codepmp import tracking

    # Buffered: a tracking server that is down for a while neither stalls training nor loses metrics.
    tracking.log_metrics(metrics, step=step)


def _run_location(stage_name: str, run_name: str) -> str:
    """s3://<bucket>/<stage>/<run name>: where a stage keeps work that a retried or rerun task resumes."""
    from codepmp.env import BUCKET_VAR, DEFAULT_BUCKET

    return f"s3://{os.environ.get(BUCKET_VAR) or DEFAULT_BUCKET}/{stage_name}/{run_name}"


def crawl_location(cfg: PipelineConfig, run_name: str) -> str:
    """Where a pipeline's crawl ranks write: the object store, under the run name and the crawl config's
    fingerprint, so a retried or rerun task resumes its finished chunks and another config never does."""
    from codepmp.crawl.crawl import config_fingerprint

    return f"{_run_location('crawl', run_name)}/{config_fingerprint(crawl_config(cfg))}"


def crawl_config(cfg: PipelineConfig):
    """`cfg.crawl` with decontamination also against every dev/evaluation file of this run's reasoning stage, so
    pretraining code never holds the problems the run finetunes or evaluates on (and a change of those files
    changes the crawl fingerprint)."""
    from codepmp.reasoning.build import evaluation_files

    if not cfg.crawl.decontam.enabled:
        return cfg.crawl
    given = cfg.crawl.decontam.reasoning_sets
    decontam = dataclasses.replace(cfg.crawl.decontam, reasoning_sets=given + [
        path for path in evaluation_files(cfg.reasoning) if path not in given])
    return dataclasses.replace(cfg.crawl, decontam=decontam)


def _crawl_result(stats: dict) -> dict:
    return {"files_seen": stats["files_seen"], "files_kept": stats["files_kept"],
            "bytes_kept": stats["bytes_kept"], **{f"dropped_{k}": v for k, v in stats["dropped"].items()}}


@stage("crawl", section="crawl", cli=("out_dir", "rank"),
       from_cli=lambda o: {"location": o["out_dir"], "rank": o["rank"]})
def crawl(cfg: PipelineConfig, run_name: str, rank: int = 0, location: str = "") -> dict:
    """One rank of the crawl into `location` (default: the object store, see `crawl_location`)."""
    from codepmp.crawl import run_crawl

    stats = run_crawl(crawl_config(cfg), location or crawl_location(cfg, run_name), rank=rank,
                      world_size=cfg.crawl.world_size)
    return {"rank": rank, **_crawl_result(stats)}


@stage("crawl_merge", section="crawl", cli=("out_dir",),
       from_cli=lambda o: {"location": o["out_dir"], "out_dir": o["out_dir"]})
def crawl_merge(cfg: PipelineConfig, run_name: str, out_dir: str, location: str = "") -> dict:
    """Merge the finished ranks; `out_dir` gets `manifest.json` (pointing at the shards) and `stats.json`."""
    from codepmp.atomic import write_json
    from codepmp.crawl import finalize_crawl

    manifest = finalize_crawl(crawl_config(cfg), location or crawl_location(cfg, run_name),
                              world_size=cfg.crawl.world_size)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(manifest, Path(out_dir) / "manifest.json")
    write_json(manifest["stats"], Path(out_dir) / "stats.json")
    return _crawl_result(manifest["stats"])


def synthesis_location(run_name: str) -> str:
    """Where a pipeline's synthesis tasks keep their row cache: the object store under the run name, so a
    retried task resumes; `synthesize_shard` adds a fingerprint of the files and settings below it."""
    return _run_location("synthesize", run_name)


def _synthesis_result(stats: dict) -> dict:
    keep = ("rank", "shards", "files", "pairs", "generated_tokens", "generate_s", "rows_per_s", "tokens_per_s")
    return {**{k: stats[k] for k in keep if k in stats}, **{f"dropped_{k}": v for k, v in stats["dropped"].items()},
            **{f"truncated_{k}": v for k, v in stats["truncated_kept"].items()}}


@stage("synthesize", section="synthesize", gpu=True, cli=("crawl_dir", "out_dir"),
       from_cli=lambda o: {**o, "location": str(Path(o["out_dir"]) / "cache")})
def synthesize(cfg: PipelineConfig, run_name: str, crawl_dir: str, out_dir: str, rank: int | None = None,
               location: str = "") -> dict:
    """Shard `rank` of the synthesis into `out_dir` (a pipeline task), or with no rank every shard in turn
    and then their merge (the CLI). Rows/s and tokens/s of the generation become MLflow metrics."""
    from codepmp.synthesize.run import run_synthesis, synthesize_shard

    where = location or synthesis_location(run_name)
    if rank is None:
        return _synthesis_result(run_synthesis(cfg.synthesize, crawl_dir, out_dir, where))
    return _synthesis_result(synthesize_shard(cfg.synthesize, crawl_dir, where, out_dir, rank))


@stage("synthesize_merge", section="synthesize")
def synthesize_merge(cfg: PipelineConfig, run_name: str, shard_dirs: list[str], out_dir: str) -> dict:
    """Concatenate the shard tasks' outputs into one pairs.parquet with summed stats."""
    from codepmp.synthesize.run import merge_shards

    stats = merge_shards(shard_dirs, out_dir)
    tokens_per_s = stats["generated_tokens"] / stats["generate_s"] if stats["generate_s"] else 0.0
    return {**_synthesis_result(stats), "tokens_per_s": round(tokens_per_s, 1)}


@stage("base_model", cached=True)
def base_model(cfg: PipelineConfig, run_name: str, out_dir: str) -> dict:
    """Copy the resolved base model into an artifact folder, so every later stage reads one exact copy."""
    from codepmp.models import resolve

    source = resolve(cfg.base_model)
    if not Path(source).is_dir():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(source).save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(source).save_pretrained(out_dir)
    else:
        shutil.copytree(source, out_dir, dirs_exist_ok=True)
    return {"base_model": cfg.base_model}


@stage("reasoning_data", section="reasoning", cached=True, cli=("out_dir",))
def reasoning_data(cfg: PipelineConfig, run_name: str, out_dir: str) -> dict:
    from codepmp.reasoning.build import build_reasoning_data
    from codepmp.synthesize.run import make_backend

    return build_reasoning_data(cfg.reasoning, out_dir,
                                policy=lambda: make_backend(cfg.synthesize, cfg.reasoning.policy_model))


def _log_training_configs(train_cfg, model_dir: str) -> None:
    """The initial model's config.json and, for DeepSpeed runs, the engine config, as run artifacts."""
    import json

    import mlflow

    from codepmp.models import resolve
    from codepmp.train.loop import deepspeed_config

    config = Path(resolve(model_dir)) / "config.json"
    if config.is_file():
        mlflow.log_dict(json.loads(config.read_text()), "model_config.json")
    if train_cfg.deepspeed_stage >= 0:
        mlflow.log_dict(deepspeed_config(train_cfg, train_cfg.grad_accum), "deepspeed_config.json")


@stage("pretrain", section="pretrain", gpu=True, cli=("base_dir", "pairs_dir", "out_dir"))
def pretrain(cfg: PipelineConfig, run_name: str, base_dir: str, pairs_dir: str, out_dir: str,
             job_id: str = "") -> dict:
    from codepmp.synthesize.run import read_pairs
    from codepmp.train.launch import launch

    _log_training_configs(cfg.pretrain, base_dir)
    return launch(cfg.pretrain, base_dir, read_pairs(pairs_dir), out_dir, _pretrain_checkpoints(cfg, run_name, job_id),
                  log=_mlflow_log)


def _pretrain_checkpoints(cfg: PipelineConfig, run_name: str, job_id: str):
    from codepmp.train.launch import Checkpoints

    # A decay run keeps its own resumable checkpoints, apart from those of the run it decays.
    name = f"pretrain-decay-{cfg.pretrain.decay_from_step}" if cfg.pretrain.decay_from_step else "pretrain"
    scaling = cfg.pretrain.scaling_ratio > 1 or cfg.pretrain.decay_from_step > 0
    return Checkpoints(run_name, job_id, name, scaling="pretrain" if scaling else "")


@stage("pretrain_trainjob", section="pretrain")
def pretrain_trainjob(cfg: PipelineConfig, run_name: str, base_dir: str, pairs_dir: str, out_dir: str,
                      job_id: str, trainjob: dict) -> dict:
    """`pretrain` on several nodes through a Kubeflow Trainer TrainJob (settings: `train.trainjob.TrainJobSettings`
    fields); its model is copied back into `out_dir`."""
    import mlflow

    from codepmp.synthesize.run import read_pairs
    from codepmp.train.trainjob import TrainJobSettings, pretrain_on_trainjob

    settings = TrainJobSettings.from_dict(trainjob)
    _log_training_configs(cfg.pretrain, base_dir)
    return pretrain_on_trainjob(cfg.pretrain, settings, base_dir, read_pairs(pairs_dir), out_dir,
                                _pretrain_checkpoints(cfg, run_name, job_id), run_name, job_id,
                                tracking=(mlflow.get_tracking_uri(), mlflow.active_run().info.run_id))


@stage("finetune", section="finetune", gpu=True, cli=("init_dir", "data_dir", "out_dir", "variant"))
def finetune(cfg: PipelineConfig, run_name: str, init_dir: str, data_dir: str, out_dir: str,
             variant: str, job_id: str = "", subset: int = 0, result_path: str = "", seed: int = -1) -> dict:
    """Finetune `init_dir` on the reasoning train pairs, or with `subset` > 0 on that many of them (a point of
    the sample-efficiency sweep); `result_path` gets what it trained on and, for a sweep task, its per-pair
    dev results as JSON. `seed` >= 0 replaces `finetune.seed` (score-head init, batch order) and, for a subset,
    picks which pairs (shuffle seed `sweep.seed` + seed); -1 keeps `finetune.seed`."""
    import mlflow

    from codepmp.evaluate.sweep import nested_subset, score_sweep_point
    from codepmp.pairs import read_reasoning_pairs
    from codepmp.train.launch import Checkpoints, launch

    train_cfg = cfg.finetune if seed < 0 else dataclasses.replace(cfg.finetune, seed=int(seed))
    mlflow.set_tags({"codepmp.variant": variant, "codepmp.subset": str(subset), "codepmp.seed": str(train_cfg.seed)})
    _log_training_configs(train_cfg, init_dir)
    pairs = read_reasoning_pairs(data_dir, "train")
    if subset:
        pairs = nested_subset(pairs, subset, cfg.sweep.seed + train_cfg.seed)
    # Tasks that differ only in their seed must not resume each other's checkpoints.
    name = f"finetune-{variant}" + (f"-n{subset}" if subset else "") + (f"-seed{seed}" if seed >= 0 else "")
    result = launch(train_cfg, init_dir, pairs, out_dir, Checkpoints(run_name, job_id, name), log=_mlflow_log)
    if result_path:
        from codepmp.atomic import write_json

        written = {"variant": variant, "subset": subset, "seed": train_cfg.seed, "train_pairs": len(pairs)}
        # Only a sweep task scores its model here; the evaluate stage scores the full finetunes, with everything else.
        if subset:
            written.update(score_sweep_point(cfg.evaluate, out_dir, data_dir))
            result["dev_pairwise_accuracy"] = written["dev_pairwise_accuracy"]
        write_json(written, result_path)
    return result


@stage("sample_efficiency", section="sweep")
def sample_efficiency(cfg: PipelineConfig, run_name: str, result_paths: list[str], report_path: str,
                      table_path: str = "") -> dict:
    """Dev pairwise accuracy against finetuning pairs, PMP vs control, over the sweep's seeds, from the sweep
    tasks' results (`codepmp.evaluate.sweep`)."""
    import json

    import mlflow

    from codepmp.evaluate.sweep import seed_metrics, sweep_markdown, sweep_table

    results = [(p, json.loads(Path(p).read_text())) for p in result_paths]
    rows = sweep_table(results, cfg.evaluate.bootstrap_resamples, cfg.sweep.seed)
    if table_path:
        from codepmp.atomic import write_json

        write_json(rows, table_path)
    report = sweep_markdown(rows, results[0][1]["dev_pairs"] if results else 0)
    Path(report_path).write_text(report)
    if not rows:
        return {"sizes": 0}
    mlflow.log_text(report, "sample_efficiency.md")
    for row in rows:
        mlflow.log_metrics({"pmp_pairwise_accuracy": row["pmp"]["mean"],
                            "control_pairwise_accuracy": row["control"]["mean"]}, step=row["pairs"])
    return {"sizes": len(rows), "seeds": max(len(row["pmp"]["over_seeds"]["seeds"]) for row in rows),
            **seed_metrics(rows)}


@stage("evaluate", section="evaluate")
def evaluate(cfg: PipelineConfig, run_name: str, models: dict[str, str], data_dir: str, report_path: str,
             results_path: str, sweep_path: str = "") -> dict:
    """PMP vs control on every domain of the reasoning data, with confidence intervals; `report_path` gets the
    HTML report (figures also go to MLflow), `results_path` the results and flat metrics as JSON."""
    import tempfile

    import mlflow

    from codepmp.evaluate.run import evaluate_models, write_evaluation
    from codepmp.report import loss_curves

    evaluation = evaluate_models(cfg.evaluate, models, data_dir)
    meta = {"title": f"codepmp evaluation: {run_name}", "profile": cfg.profile, "models": ", ".join(models)}
    with tempfile.TemporaryDirectory(prefix="codepmp-figures-") as figures:
        metrics, figure_files = write_evaluation(evaluation, meta, report_path, results_path, figures, sweep_path,
                                                 loss_curves(cfg.experiment, run_name))
        for figure in figure_files:
            mlflow.log_artifact(str(figure), "figures")
    mlflow.log_artifact(report_path)
    return metrics


@stage("register", section="promote")
def register(cfg: PipelineConfig, run_name: str, model_dir: str, results_path: str, data_dir: str = "",
             job_id: str = "") -> dict:
    """Register the PMP model; it takes the champion alias only when it beats both its control and the current
    champion (re-scored on `data_dir`) on the gate metric with paired intervals above 0 (`codepmp.registry`)."""
    from codepmp.registry import register_pmp

    return register_pmp(cfg, run_name, job_id, model_dir, results_path, data_dir)
