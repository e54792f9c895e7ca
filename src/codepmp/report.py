"""The end-of-run summary, read back from MLflow (the record every stage wrote), not from local state."""

from __future__ import annotations

import os
from pathlib import Path

STAGE_ORDER = ["crawl", "crawl_merge", "synthesize", "synthesize_merge", "base_model", "reasoning_data", "pretrain",
               "finetune", "sample_efficiency", "evaluate", "register"]
HEADLINE = ["pairwise_accuracy", "bon1_rm", "bon4_rm", "bon8_rm", "bon8_random", "bon8_majority", "bon8_oracle"]


def stage_runs(experiment: str, run_name: str) -> list[dict]:
    import mlflow

    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string=f"tags.`codepmp.run` = '{run_name}'")
    rows = [{"stage": r.data.tags.get("codepmp.stage", "?"), "variant": r.data.tags.get("codepmp.variant", ""),
             "subset": int(r.data.tags.get("codepmp.subset", "0")), "metrics": r.data.metrics, "tags": r.data.tags,
             "run_id": r.info.run_id} for r in runs]
    return sorted(rows, key=lambda r: (STAGE_ORDER.index(r["stage"]) if r["stage"] in STAGE_ORDER else 99,
                                       r["subset"], r["variant"]))


def summary_text(experiment: str, run_name: str, root: str | Path, total_s: float | None = None) -> str:
    rows = stage_runs(experiment, run_name)
    lines = [f"\n== codepmp run {run_name} ==", f"{'stage':<24}{'wall (s)':>10}"]
    for r in rows:
        label = r["stage"] + (f" ({r['variant']}" + (f", n={r['subset']})" if r["subset"] else ")")
                              if r["variant"] else "")
        lines.append(f"{label:<24}{r['metrics'].get('wall_s', float('nan')):>10.1f}")
    if total_s is not None:
        lines.append(f"{'total (pipeline)':<24}{total_s:>10.1f}")
    evaluation = next((r["metrics"] for r in rows if r["stage"] == "evaluate"), {})
    keys = [k for k in HEADLINE if f"pmp.{k}" in evaluation]
    if keys:
        lines += ["", f"{'metric':<24}{'PMP':>10}{'control':>10}"]
        lines += [f"{k:<24}{evaluation[f'pmp.{k}']:>10.3f}{evaluation.get(f'control.{k}', float('nan')):>10.3f}"
                  for k in keys]
    sweep = next((r["metrics"] for r in rows if r["stage"] == "sample_efficiency"), {})
    sizes = sorted(int(k.removeprefix("pmp.n")) for k in sweep if k.startswith("pmp.n"))
    if sizes:
        lines += ["", "sample efficiency (dev pairwise accuracy by finetuning pairs)",
                  f"{'pairs':<24}{'PMP':>10}{'control':>10}"]
        lines += [f"{n:<24}{sweep[f'pmp.n{n}']:>10.3f}{sweep[f'control.n{n}']:>10.3f}" for n in sizes]
    reg = next((r for r in rows if r["stage"] == "register"), None)
    if reg:
        name = reg["tags"].get("codepmp.registered_model", "?")
        moved = "MOVED to it" if reg["metrics"].get("promoted") else "kept by the previous version"
        lines += ["", f"registered model {name} version {int(reg['metrics'].get('version', -1))}; "
                      f"champion alias {moved}"]
    lines += [f"MLflow UI: {os.environ.get('MLFLOW_TRACKING_URI', '?')}", f"artifacts: {root}"]
    return "\n".join(lines)


def print_summary(experiment: str, run_name: str, root: str | Path, total_s: float | None = None) -> None:
    print(summary_text(experiment, run_name, root, total_s), flush=True)
