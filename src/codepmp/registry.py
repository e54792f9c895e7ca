"""The promotion gate of the PMP reward model, and the manual `promote` behind `make promote`.

A new version takes the champion alias only when both paired comparisons on this run's dev data pass:

- control: PMP minus its own control (the same finetune from the plain base model), read from the evaluate
  stage's results; the 95 % paired-bootstrap interval's lower bound must lie above 0.
- champion: PMP minus the current champion, which is loaded from the registry and scored here on the same
  dev data with the evaluate code; same rule. A stored number of the champion is never used: it may come
  from other dev data. With no champion there is nothing to beat, and the control comparison alone decides.

Otherwise the version becomes `challenger`, and its reason tag names the comparison that failed.

    verdict = gate_verdict(cfg, model_dir, data_dir, differences)   # before anything is registered
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codepmp.errors import InputError

GATE_METRIC_PATTERN = re.compile(r"^(?:[A-Za-z0-9_-]+\.)?(?:pairwise_accuracy|option_accuracy|bon[1-9][0-9]*_rm)$")
"""Metrics with a paired PMP-minus-other interval: pairwise or option accuracy (over all dev pairs or one
domain's) and a domain's best-of-N accuracy with the reward model picking (`gsm8k.bon8_rm`)."""
TAG_PREFIX = "codepmp.gate."
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

    from codepmp.tracking import _mlflow_errors

    client = mlflow.MlflowClient()
    try:
        model = client.get_registered_model(registered_model)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        with _mlflow_errors(f"registered model '{registered_model}'"):
            raise
    return model.aliases.get(alias)


def download_version(registered_model: str, version: str, out_dir: str | Path) -> Path:
    """Version `version` of the registered reward model as a Hugging Face folder in `out_dir`."""
    import mlflow

    from codepmp.tracking import _mlflow_errors

    with _mlflow_errors(f"loading version {version} of '{registered_model}'"):
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

    from codepmp.tracking import _mlflow_errors, check_tracking_server

    if force and not (who.strip() and why.strip()):
        raise InputError("a forced promotion needs who is promoting and why (make promote VERSION=N WHY='...')")
    check_gate_metric(gate_metric)
    client = mlflow.MlflowClient(tracking_uri=check_tracking_server())
    version = str(version)
    with _mlflow_errors(f"version {version} of registered model '{registered_model}'"):
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
