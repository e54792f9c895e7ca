"""The model registry: the promotion gate of the PMP reward model, its registration with lineage (the register
stage, `register_pmp`), and the manual `promote` behind `make promote`.

A new version takes the champion alias only when both paired comparisons on this run's dev data pass:

- control: PMP minus its own control (the same finetune from the plain base model), read from the evaluate
  stage's results; the 95 % paired-bootstrap interval's lower bound must lie above 0.
- champion: PMP minus the current champion, which is loaded from the registry and scored here on the same
  dev data with the evaluate code; same rule. A stored number of the champion is never used: it may come
  from other dev data. With no champion there is nothing to beat, and the control comparison alone decides.

Otherwise the version becomes `challenger`, and its reason tag names the comparison that failed.

    verdict = gate_verdict(cfg, model_dir, data_dir, differences)   # before anything is registered
    register_reward_model(rm_dir, "codepmp-reward-model", metrics, verdict, lineage=lineage)
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codepmp.errors import InputError
from codepmp.tracking import RUN_TAG, check_tracking_server, mlflow_errors, stage_run

GATE_METRIC_PATTERN = re.compile(r"^(?:[A-Za-z0-9_-]+\.)?(?:pairwise_accuracy|option_accuracy|bon[1-9][0-9]*_rm)$")
"""Metrics with a paired PMP-minus-other interval: pairwise or option accuracy (over all dev pairs or one
domain's) and a domain's best-of-N accuracy with the reward model picking (`gsm8k.bon8_rm`)."""
TAG_PREFIX = "codepmp.gate."
MODEL_ARTIFACT_NAME = "reward_model"
DATA_TAG_PREFIX = "codepmp.data_sha256."
EVALUATED_TABLES = ("dev", "pool", "logic")
"""The reasoning tables the gate metrics are computed on: two versions' stored numbers compare only when these match."""
CHAMPION, CHALLENGER = "champion", "challenger"


def check_gate_metric(metric: str, differences: Mapping[str, float] | None = None) -> str:
    """`metric` when it is a gate metric (and, given the evaluate stage's differences, one they hold with its
    interval); otherwise an InputError naming it and what a gate metric looks like."""
    if not GATE_METRIC_PATTERN.match(metric):
        raise InputError(f"evaluate.gate_metric '{metric}' is not a gate metric: use pairwise_accuracy, "
                         "<domain>.pairwise_accuracy, <domain>.option_accuracy or <domain>.bon<N>_rm")
    if differences is not None and not all(k in differences for k in (metric, f"{metric}_ci_low", f"{metric}_ci_high")):
        known = sorted(k for k in differences if GATE_METRIC_PATTERN.match(k))
        raise InputError(f"evaluate.gate_metric '{metric}' has no PMP - control difference with an interval in the "
                         f"evaluation results (this run has: {', '.join(known) or 'none'})")
    return metric


@dataclass(frozen=True)
class Comparison:
    """PMP minus `against` on one gate metric over the same dev items: the mean and its paired 95 % interval."""

    against: str
    mean: float
    low: float
    high: float

    @property
    def passed(self) -> bool:
        return self.low > 0.0

    def describe(self, metric: str) -> str:
        result = "lower bound above 0" if self.passed else "lower bound not above 0"
        return (f"pmp - {self.against} {metric} {self.mean:+.4f} "
                f"[95% CI {self.low:+.4f}, {self.high:+.4f}]: {result}")


def paired_comparison(differences: Mapping[str, float], metric: str, against: str) -> Comparison:
    """The `metric` entry of an `evaluate_models` differences dict (first model minus second) as a Comparison."""
    check_gate_metric(metric, differences)
    return Comparison(against, float(differences[metric]), float(differences[f"{metric}_ci_low"]),
                      float(differences[f"{metric}_ci_high"]))


@dataclass(frozen=True)
class GateVerdict:
    """Both comparisons and what follows from them; `champion` is None when no version held the alias."""

    metric: str
    control: Comparison
    champion: Comparison | None
    champion_version: str | None

    @property
    def promoted(self) -> bool:
        return self.control.passed and (self.champion is None or self.champion.passed)

    @property
    def reason(self) -> str:
        """A tag value: which comparison failed, or that both passed (or that there was no champion to beat)."""
        failed = [c.against for c in (self.control, self.champion) if c is not None and not c.passed]
        if failed:
            return "_and_".join(failed) + "_not_beaten"
        return "beats_control_and_champion" if self.champion else "beats_control_no_champion"

    @property
    def summary(self) -> str:
        against_champion = (self.champion.describe(self.metric).replace(" - champion ",
                                                                        f" - champion version {self.champion_version} ")
                            + " (champion re-scored on this run's dev data)"
                            if self.champion else "no champion to beat")
        return (f"{CHAMPION if self.promoted else CHALLENGER} ({self.reason}): {self.control.describe(self.metric)}; "
                f"{against_champion}")

    def tags(self) -> dict[str, str]:
        """The version tags of the gate: metric, both comparisons' mean/low/high, verdict, reason, summary."""
        tags = {f"{TAG_PREFIX}metric": self.metric, f"{TAG_PREFIX}verdict": CHAMPION if self.promoted else CHALLENGER,
                f"{TAG_PREFIX}reason": self.reason, f"{TAG_PREFIX}summary": self.summary,
                f"{TAG_PREFIX}champion.version": self.champion_version or "none"}
        for comparison in (self.control, self.champion):
            if comparison is not None:
                tags.update({f"{TAG_PREFIX}{comparison.against}.{field}": repr(getattr(comparison, field))
                             for field in ("mean", "low", "high")})
        return tags


def champion_version(registered_model: str, alias: str = CHAMPION) -> str | None:
    """The version holding `alias`, or None (also when the registered model does not exist yet)."""
    import mlflow
    from mlflow.exceptions import MlflowException


    client = mlflow.MlflowClient()
    try:
        model = client.get_registered_model(registered_model)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        with mlflow_errors(f"registered model '{registered_model}'"):
            raise
    return model.aliases.get(alias)


def download_version(registered_model: str, version: str, out_dir: str | Path) -> Path:
    """Version `version` of the registered reward model as a Hugging Face folder in `out_dir`."""
    import mlflow


    with mlflow_errors(f"loading version {version} of '{registered_model}'"):
        components = mlflow.transformers.load_model(f"models:/{registered_model}/{version}", return_type="components")
    out_dir = Path(out_dir)
    components["model"].save_pretrained(out_dir)
    components["tokenizer"].save_pretrained(out_dir)
    return out_dir


MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")


def fetch_reward_model(spec: str, out_dir: str | Path) -> str:
    """A local folder for a reward model named by a folder, an `s3://` folder, or a registry URI
    (`models:/<name>/<version>`, `models:/<name>@<alias>`), downloaded into `out_dir` when it is remote."""
    if not spec.startswith("models:/"):
        from codepmp.models import resolve

        return resolve(spec)
    match = MODEL_URI.match(spec)
    if not match:
        raise InputError(f"model '{spec}' is not a registry URI like models:/<name>/<version> or models:/<name>@<alias>")
    version = match["version"] or champion_version(match["name"], match["alias"])
    if version is None:
        raise InputError(f"model '{spec}': no version of '{match['name']}' holds the alias '{match['alias']}'")
    return str(download_version(match["name"], version, out_dir))


def gate_verdict(cfg: Any, model_dir: str | Path, data_dir: str | Path | None,
                 differences: Mapping[str, float]) -> GateVerdict:
    """Both comparisons for the PMP model in `model_dir`: against its control from the evaluate stage's
    `differences`, and against the current holder of `cfg.promote.alias`, re-scored here on `data_dir`.
    `cfg` is the pipeline config (evaluate settings, gate metric, registered model and alias)."""
    metric = check_gate_metric(cfg.evaluate.gate_metric, differences)
    control = paired_comparison(differences, metric, "control")
    holder = champion_version(cfg.promote.registered_model, cfg.promote.alias)
    if holder is None:
        return GateVerdict(metric, control, None, None)
    if not data_dir or not Path(data_dir).is_dir():
        raise InputError(f"the gate re-scores '{cfg.promote.alias}' version {holder} on this run's dev data, "
                         f"but the data folder {str(data_dir)!r} does not exist")
    from codepmp.evaluate.run import evaluate_models

    with tempfile.TemporaryDirectory(prefix="codepmp-champion-") as scratch:
        holder_dir = download_version(cfg.promote.registered_model, holder, Path(scratch) / f"version-{holder}")
        # The evaluate stage's own settings and seed: the champion is scored exactly as PMP and control were.
        evaluation = evaluate_models(cfg.evaluate, {"pmp": str(model_dir), "champion": str(holder_dir)}, data_dir)
    return GateVerdict(metric, control, paired_comparison(evaluation["differences"], metric, "champion"), holder)


def _data_hashes(tags: Mapping[str, str]) -> dict[str, str]:
    return {key[len(DATA_TAG_PREFIX):]: value for key, value in tags.items() if key.startswith(DATA_TAG_PREFIX)}


def check_same_data(registered_model: str, version: str, version_tags: Mapping[str, str], holder: str,
                    holder_tags: Mapping[str, str]) -> None:
    """InputError unless both versions were evaluated on the same reasoning tables (by their sha256 tags)."""
    mine, theirs = _data_hashes(version_tags), _data_hashes(holder_tags)
    differing = [t for t in EVALUATED_TABLES if mine.get(t) is None or mine.get(t) != theirs.get(t)]
    if differing:
        shown = ", ".join(f"{t}: {mine.get(t, 'unrecorded')[:12]} vs {theirs.get(t, 'unrecorded')[:12]}"
                          for t in differing)
        raise InputError(f"'{registered_model}' versions {version} and {holder} were not evaluated on the same data "
                         f"({shown}), so their stored numbers do not compare; the register stage's gate re-scores "
                         "the champion on one run's data, or promote by hand (make promote VERSION=.. WHY=..)")


def _run_metrics(client: Any, registered_model: str, version: str) -> dict[str, float]:
    """The metrics of the run that registered `version`: where the full evaluation is kept."""
    run_id = client.get_model_version(registered_model, version).run_id
    return dict(client.get_run(run_id).data.metrics) if run_id else {}


def _unforced_reason(client: Any, registered_model: str, version: str, tags: Mapping[str, str], holder: str | None,
                     alias: str, metric: str) -> str:
    """Why `version` may take `alias` without force; InputError when it may not. With a holder, both versions
    must have been evaluated on the same data, and `version`'s interval on `metric` must lie wholly above the
    holder's: stored numbers of two runs cannot be paired, so only intervals that do not overlap count."""
    if holder is None:
        low = tags.get(f"{TAG_PREFIX}control.low")
        if low is None or float(low) <= 0.0 or tags.get(f"{TAG_PREFIX}metric") != metric:
            raise InputError(f"version {version} of '{registered_model}' has no {metric} lead over its control with "
                             f"a lower bound above 0 ({TAG_PREFIX}control.low: {low}), so it cannot take '{alias}' "
                             "unforced")
        return f"no version held '{alias}'; {tags.get(TAG_PREFIX + 'summary', '')}"
    holder_tags = client.get_model_version(registered_model, holder).tags
    check_same_data(registered_model, version, tags, holder, holder_tags)
    mine, theirs = _run_metrics(client, registered_model, version), _run_metrics(client, registered_model, holder)
    missing = [f"version {v}" for v, m in ((version, mine), (holder, theirs))
               if f"{metric}_ci_low" not in m or f"{metric}_ci_high" not in m]
    if missing:
        raise InputError(f"{' and '.join(missing)} of '{registered_model}' logged no interval of {metric}; "
                         "register through the pipeline or promote by hand (make promote VERSION=.. WHY=..)")
    low, their_high = mine[f"{metric}_ci_low"], theirs[f"{metric}_ci_high"]
    if low <= their_high:
        raise InputError(f"version {version} of '{registered_model}' does not beat '{alias}' version {holder} on "
                         f"{metric} (same data): its 95% interval's low {low:.4f} is not above the champion's high "
                         f"{their_high:.4f}")
    return (f"{metric} on the same data: version {version}'s 95% interval (low {low:.4f}) lies above version "
            f"{holder}'s (high {their_high:.4f})")


def promote(registered_model: str, version: str | int, alias: str = CHAMPION, gate_metric: str = "pairwise_accuracy",
            force: bool = False, who: str = "", why: str = "") -> dict[str, Any]:
    """Move `alias` to `version` by hand. Forced (`make promote VERSION=.. WHY=..`): always, with `who` and
    `why` written on the version as audit tags. Unforced: only as `_unforced_reason` allows, else InputError.
    Returns {name, version, promoted, previous_version, alias, reason}."""
    import datetime

    import mlflow


    if force and not (who.strip() and why.strip()):
        raise InputError("a forced promotion needs who is promoting and why (make promote VERSION=N WHY='...')")
    check_gate_metric(gate_metric)
    client = mlflow.MlflowClient(tracking_uri=check_tracking_server())
    version = str(version)
    with mlflow_errors(f"version {version} of registered model '{registered_model}'"):
        tags = client.get_model_version(registered_model, version).tags
        holder = client.get_registered_model(registered_model).aliases.get(alias)
        outcome = {"name": registered_model, "version": version, "promoted": False, "previous_version": holder,
                   "alias": alias if holder == version else None}
        if holder == version:
            return {**outcome, "reason": f"version {version} already holds '{alias}'"}
        reason = "forced" if force else _unforced_reason(client, registered_model, version, tags, holder, alias,
                                                         gate_metric)
        client.set_registered_model_alias(registered_model, alias, version)
        audit = {"codepmp.promoted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "codepmp.promoted_over": str(holder), "codepmp.promote_forced": str(force).lower(),
                 "codepmp.promote_reason": why if force else reason}
        if force:
            audit["codepmp.promoted_by"] = who
        for key, text in audit.items():
            client.set_model_version_tag(registered_model, version, key, text)
    return {**outcome, "promoted": True, "alias": alias, "reason": reason}


def check_reward_model_dir(model_dir: str | Path) -> Path:
    """InputError unless `model_dir` is an HF folder of a 1-label regression sequence classifier."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise InputError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    config = json.loads(config_path.read_text())
    num_labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    if num_labels != 1 or config.get("problem_type") != "regression":
        raise InputError(f"{model_dir} must hold a reward model with num_labels=1 and "
                         f"problem_type='regression' (got num_labels={num_labels}, "
                         f"problem_type={config.get('problem_type')!r}); without 'regression' the "
                         f"text-classification pipeline applies a sigmoid to the reward")
    return model_dir.resolve()


def load_reward_model(model_dir: Path) -> dict[str, Any]:
    """{"model", "tokenizer"} as the transformers flavor takes them, loaded the way every stage loads them."""
    from codepmp.models import load_reward_model as load

    model, tokenizer = load(str(model_dir))
    return {"model": model, "tokenizer": tokenizer}


def pip_requirements() -> list[str]:
    """Pinned requirements of a logged reward model (given explicitly, so MLflow does not infer them
    by loading the model in a subprocess)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("mlflow", "torch", "transformers",
                                                                    "tokenizers", "accelerate")]


def register_reward_model(model_dir: str | Path, registered_model: str, metrics: Mapping[str, float],
                          verdict: GateVerdict, alias: str = "champion", run_name: str = "manual",
                          experiment: str = "codepmp", challenger_alias: str = "challenger",
                          lineage: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Log the HF reward-model folder with the transformers flavor and register a version. The full `metrics`
    go on the MLflow run; the version's tags carry the gate `verdict` (see `codepmp.registry`) and `lineage`
    (data hashes, pipeline run ids, base model). `alias` moves to the version when the verdict promotes it,
    `challenger_alias` otherwise.

    Logs into the active run, or else into a new "<run_name>/register" run of `experiment`.
    Returns {name, version, promoted, previous_version, alias, reason, summary}.
    """
    model_dir = check_reward_model_dir(model_dir)
    check_tracking_server()
    import mlflow

    run_context = (contextlib.nullcontext() if mlflow.active_run() is not None else
                   stage_run(experiment, "register", run_name,
                             {"registered_model": registered_model, "gate_metric": verdict.metric}))
    with run_context, mlflow_errors(f"registering '{registered_model}'"):
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
        model_info = mlflow.transformers.log_model(
            transformers_model=load_reward_model(model_dir), name=MODEL_ARTIFACT_NAME,
            task="text-classification", registered_model_name=registered_model,
            pip_requirements=pip_requirements())
        version = str(model_info.registered_model_version)
    client = mlflow.MlflowClient()
    with mlflow_errors(f"tagging '{registered_model}' version {version}"):
        holder = client.get_registered_model(registered_model).aliases.get(alias)
        tags = {**(lineage or {}), RUN_TAG: run_name, **verdict.tags()}
        promoted = verdict.promoted
        if promoted and holder != verdict.champion_version:
            # Another version took the alias while this one was scored against the previous holder.
            promoted = False
            moved = f"'{alias}' moved to version {holder} during the gate; "
            tags.update({f"{TAG_PREFIX}verdict": challenger_alias, f"{TAG_PREFIX}reason": "champion_changed",
                         f"{TAG_PREFIX}summary": moved + verdict.summary})
        for key, value in tags.items():
            client.set_model_version_tag(registered_model, version, key, str(value))
        given = alias if promoted else challenger_alias
        if given:
            client.set_registered_model_alias(registered_model, given, version)
    return {"name": registered_model, "version": version, "promoted": promoted, "previous_version": holder,
            "alias": given or None, "reason": tags[f"{TAG_PREFIX}reason"], "summary": tags[f"{TAG_PREFIX}summary"]}


def register_pmp(cfg: Any, run_name: str, job_id: str, model_dir: str | Path, results_path: str | Path,
                 data_dir: str | Path = "") -> dict[str, Any]:
    """The register stage: the gate's verdict on the PMP model at `model_dir` (its differences to the control from
    the evaluate stage's `results_path`, the champion re-scored on `data_dir`), then the version registered with
    the run's metrics, its lineage (pipeline run and job, base model, sha256 of each reasoning table) and the
    verdict's tags. Returns the stage's result: version, alias, gate reason and intervals."""
    check_gate_metric(cfg.evaluate.gate_metric)
    results = json.loads(Path(results_path).read_text())
    metrics = results.get("metrics", {}).get("pmp")
    if not metrics:
        raise InputError(f"{results_path} holds no metrics of a 'pmp' model (run the evaluate stage first)")
    if "differences" not in results:
        raise InputError(f"{results_path} holds no PMP - control differences (rerun the evaluate stage)")
    verdict = gate_verdict(cfg, model_dir, data_dir, results["differences"])
    lineage = {"codepmp.pipeline_run": run_name, "codepmp.pipeline_job": job_id or "none",
               "codepmp.base_model": cfg.base_model}
    stats_file = Path(data_dir) / "stats.json" if data_dir else None
    if stats_file and stats_file.is_file():
        lineage.update({f"{DATA_TAG_PREFIX}{table}": digest
                        for table, digest in json.loads(stats_file.read_text()).get("sha256", {}).items()})
    # The whole evaluation, differences included, goes on the run; the version gets only the gate and lineage.
    run_metrics = {**metrics, **{f"diff.{key}": value for key, value in results["differences"].items()}}
    outcome = register_reward_model(model_dir, cfg.promote.registered_model, run_metrics, verdict,
                                    alias=cfg.promote.alias, run_name=run_name, lineage=lineage)
    print(f"[register] version {outcome['version']}: {outcome['summary']}", flush=True)
    gate = {f"gate_{c.against}_{field}": getattr(c, field) for c in (verdict.control, verdict.champion) if c
            for field in ("mean", "low", "high")}
    return {"registered_model": outcome["name"], "version": int(outcome["version"]),
            "promoted": int(bool(outcome["promoted"])), "alias": outcome["alias"] or "", "gate_metric": verdict.metric,
            "gate_reason": outcome["reason"], "gate_summary": outcome["summary"],
            "gate_champion_version": verdict.champion_version or "none", **gate}
