"""The end-of-run summary, read back from MLflow (the record every stage wrote), not from local state."""

from __future__ import annotations

import os
from pathlib import Path

from codepmp.stages import STAGES
from codepmp.tracking import redact_uri


def headline_metrics(evaluation: dict[str, float]) -> list[str]:
    """The evaluate stage's metrics worth a summary line: accuracies, and best-of-N at the largest N."""
    keys = sorted({k.removeprefix("pmp.") for k in evaluation if k.startswith("pmp.") and "_ci_" not in k})
    largest = max((int(k.split(".bon")[1].split("_")[0]) for k in keys if ".bon" in k), default=0)
    return [k for k in keys if ".bon" not in k or f".bon{largest}_" in k or ".bon1_rm" in k]


def stage_runs(experiment: str, run_name: str) -> list[dict]:
    import mlflow

    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string=f"tags.`codepmp.run` = '{run_name}'")
    rows = [{"stage": r.data.tags.get("codepmp.stage", "?"), "variant": r.data.tags.get("codepmp.variant", ""),
             "subset": int(r.data.tags.get("codepmp.subset", "0")), "seed": r.data.tags.get("codepmp.seed", ""),
             "metrics": r.data.metrics, "tags": r.data.tags,
             "run_id": r.info.run_id} for r in runs]
    order = list(STAGES)
    return sorted(rows, key=lambda r: (order.index(r["stage"]) if r["stage"] in order else len(order),
                                       r["subset"], r["seed"], r["variant"]))


def loss_curves(experiment: str, run_name: str) -> dict[str, list[tuple[int, float]]]:
    """Training loss by step of every pretrain and finetune run of the pipeline run, labelled like the summary
    ("pretrain", "finetune (pmp)", ...); sweep runs are left out (their curves are the sample-efficiency plot)."""
    import mlflow

    client = mlflow.MlflowClient()
    curves = {}
    for r in stage_runs(experiment, run_name):
        if r["stage"] in ("pretrain", "pretrain_trainjob", "finetune") and not r["subset"]:
            label = r["stage"] + (f" ({r['variant']})" if r["variant"] else "")
            curves[label] = sorted((m.step, m.value) for m in client.get_metric_history(r["run_id"], "loss"))
    return curves


def summary_text(experiment: str, run_name: str, root: str | Path, total_s: float | None = None) -> str:
    rows = stage_runs(experiment, run_name)
    lines = [f"\n== codepmp run {run_name} ==", f"{'stage':<24}{'wall (s)':>10}"]
    seeds = {r["seed"] for r in rows if r["subset"]}
    for r in rows:
        seed = f", seed {r['seed']}" if r["subset"] and len(seeds) > 1 else ""
        label = r["stage"] + (f" ({r['variant']}" + (f", n={r['subset']}{seed})" if r["subset"] else ")")
                              if r["variant"] else "")
        lines.append(f"{label:<24}{r['metrics'].get('wall_s', float('nan')):>10.1f}")
    if total_s is not None:
        lines.append(f"{'total (pipeline)':<24}{total_s:>10.1f}")
    evaluation = next((r["metrics"] for r in rows if r["stage"] == "evaluate"), {})
    keys = headline_metrics(evaluation)
    if keys:
        def cell(model: str, key: str) -> str:
            value, low, high = (evaluation.get(f"{model}.{key}{s}") for s in ("", "_ci_low", "_ci_high"))
            ci = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
            return f"{value:.3f}{ci}" if value is not None else "-"

        lines += ["", f"{'metric':<28}{'PMP [95% CI]':>22}{'control [95% CI]':>22}{'PMP - control':>16}"]
        for k in keys:
            diff = evaluation.get(f"diff.{k}")
            lines.append(f"{k:<28}{cell('pmp', k):>22}{cell('control', k):>22}"
                         + (f"{diff:>+16.3f}" if diff is not None else f"{'':>16}"))
    data = next((r["tags"].get("codepmp.data") for r in rows if r["stage"] == "reasoning_data"), None)
    if data:
        lines.append(f"reasoning data: {data}")
    plumbing = next((r["tags"].get("codepmp.plumbing_check") for r in rows if r["stage"] == "evaluate"), None)
    if plumbing:
        lines.append(f"NOTE: {plumbing}")
    sweep = next((r["metrics"] for r in rows if r["stage"] == "sample_efficiency"), {})
    sizes = sorted(int(k.removeprefix("pmp.n")) for k in sweep if k.startswith("pmp.n") and "_ci_" not in k)
    if sizes:
        lines += ["", "sample efficiency (dev pairwise accuracy by finetuning pairs)",
                  f"{'pairs':<24}{'PMP':>10}{'control':>10}"]
        lines += [f"{n:<24}{sweep[f'pmp.n{n}']:>10.3f}{sweep[f'control.n{n}']:>10.3f}" for n in sizes]
    reg = next((r for r in rows if r["stage"] == "register"), None)
    if reg:
        name = reg["tags"].get("codepmp.registered_model", "?")
        moved = ("MOVED to it" if reg["metrics"].get("promoted") else
                 f"not given to it (alias {reg['tags'].get('codepmp.alias') or 'none'})")
        lines += ["", f"registered model {name} version {int(reg['metrics'].get('version', -1))}; "
                      f"champion alias {moved}"]
        if reg["tags"].get("codepmp.gate_summary"):
            lines.append(f"gate: {reg['tags']['codepmp.gate_summary']}")
    lines += [f"MLflow UI: {redact_uri(os.environ.get('MLFLOW_TRACKING_URI', '?'))}", f"artifacts: {root}"]
    return "\n".join(lines)


def print_summary(experiment: str, run_name: str, root: str | Path, total_s: float | None = None) -> None:
    print(summary_text(experiment, run_name, root, total_s), flush=True)
