"""The whole pipeline at the `tiny` profile through kfp.local, on the real packaged SmolLM2 model,
plus the compiled YAML a cluster would get.

    .venv/bin/python -m pytest tests/pipeline -q
"""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from codepmp.report import stage_runs, summary_text
from codepmp_kfp.pipelines.run import compile_pipeline

STAGES = ["crawl-ranks", "for-loop-1", "crawl-merge", "synthesize-shards", "for-loop-2", "synthesize-merge", "base-model",
          "reasoning-data", "pretrain", "finetune", "finetune-2", "sweep-points", "for-loop-3", "sample-efficiency",
          "evaluate", "register"]


def test_local_fan_outs_run_one_task_at_a_time_and_cluster_ones_all_at_once(tmp_path):
    from kfp import compiler

    from codepmp_kfp.pipelines.pipeline import build

    def loop_limits(spec: dict) -> dict:
        tasks = spec["root"]["dag"]["tasks"]
        return {name: task.get("iteratorPolicy", {}).get("parallelismLimit", 0)
                for name, task in tasks.items() if name.startswith("for-loop-")}

    compiler.Compiler().compile(build(), str(tmp_path / "local.yaml"))
    local = next(yaml.safe_load_all((tmp_path / "local.yaml").read_text()))
    assert loop_limits(local) == {"for-loop-1": 1, "for-loop-2": 1, "for-loop-3": 1}
    cluster = next(yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "cluster.yaml"))).read_text()))
    assert loop_limits(cluster) == {"for-loop-1": 0, "for-loop-2": 0, "for-loop-3": 0}


@pytest.mark.integration
def test_tiny_pipeline_end_to_end(tiny_pipeline_run):
    experiment, run_name = tiny_pipeline_run["experiment"], tiny_pipeline_run["run_name"]
    runs = stage_runs(experiment, run_name)
    by_stage = {(r["stage"], r["variant"]): r["metrics"] for r in runs if not r["subset"]}
    assert set(by_stage) == {("crawl", ""), ("crawl_merge", ""), ("synthesize", ""), ("synthesize_merge", ""),
                             ("base_model", ""), ("reasoning_data", ""),
                             ("pretrain", ""), ("finetune", "pmp"), ("finetune", "control"), ("sample_efficiency", ""),
                             ("evaluate", ""), ("register", "")}
    # The tiny profile's sweep: one size, finetuned from PMP and from base.
    assert sorted((r["variant"], r["subset"]) for r in runs if r["subset"]) == [("control", 2), ("pmp", 2)]
    assert {"pmp.n2", "control.n2", "diff.n2"} <= set(by_stage[("sample_efficiency", "")])
    assert all(m["wall_s"] > 0 for m in by_stage.values())
    assert by_stage[("synthesize_merge", "")]["pairs"] >= 1
    assert by_stage[("synthesize", "")]["tokens_per_s"] > 0 and by_stage[("synthesize", "")]["rows_per_s"] > 0
    assert "lm_loss" in by_stage[("pretrain", "")] and "lm_loss" not in by_stage[("finetune", "pmp")]
    evaluation = by_stage[("evaluate", "")]
    for variant in ("pmp", "control"):
        assert evaluation[f"{variant}.pairwise_accuracy_ci_low"] <= evaluation[f"{variant}.pairwise_accuracy"] \
            <= evaluation[f"{variant}.pairwise_accuracy_ci_high"]
        assert evaluation[f"{variant}.gsm8k.bon4_oracle"] == 1.0
    assert "diff.pairwise_accuracy" in evaluation and evaluation["scoring_s"] > 0
    # A first version has no champion to beat: its own control comparison alone decides, and the verdict
    # must agree with the evaluate stage's paired PMP - control interval.
    register = next(r for r in runs if r["stage"] == "register")
    control_beaten = evaluation["diff.pairwise_accuracy_ci_low"] > 0
    assert register["metrics"]["promoted"] == float(control_beaten)
    assert register["tags"]["codepmp.gate_reason"] == ("beats_control_no_champion" if control_beaten
                                                       else "control_not_beaten")
    client = mlflow.MlflowClient()
    version = str(int(register["metrics"]["version"]))
    alias = "champion" if control_beaten else "challenger"
    assert client.get_model_version_by_alias(tiny_pipeline_run["registered_model"], alias).version == version
    report = (tiny_pipeline_run["tasks"]["evaluate"] / "report").read_text()
    assert "Best-of-N" in report and "Sample efficiency" in report and "data:image/png;base64," in report
    summary = summary_text(experiment, run_name, tiny_pipeline_run["root"])
    assert "finetune (control)" in summary and "finetune (pmp, n=2)" in summary
    assert ("champion alias MOVED" if control_beaten else "champion alias not given to it (alias challenger)") in summary
    assert "sample efficiency (dev pairwise accuracy by finetuning pairs)" in summary
    assert f"registered model {tiny_pipeline_run['registered_model']} version {version}" in summary
    assert f"gate: {register['tags']['codepmp.gate_summary']}" in summary
    assert "NOTE: dev pairs/pools are corrupted copies" in summary  # the tiny profile's plumbing check


def test_compiled_yaml_holds_every_stage_and_cluster_settings(tmp_path):
    spec_file = tmp_path / "cluster.yaml"
    spec_file.write_text(yaml.safe_dump({"gpus": 2, "gpu_node_selector": {"pool": "h100"}}))
    out = compile_pipeline(str(tmp_path / "codepmp.yaml"), str(spec_file))
    docs = list(yaml.safe_load_all(Path(out).read_text()))
    spec, platform = docs[0], docs[1]
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(f"{s}" for s in STAGES)
    fan_out = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert list(fan_out) == ["crawl"]  # one crawl task per rank, items from crawl-ranks' output
    assert tasks["for-loop-1"]["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--crawl-ranks-Output"}
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"profile", "overrides", "run_name"}
    executors = spec["deploymentSpec"]["executors"]
    pretrain_exec = executors[tasks["pretrain"]["componentRef"]["name"].replace("comp-", "exec-")]
    assert pretrain_exec["container"]["resources"]["accelerator"]["resourceCount"] == "2"
    assert pretrain_exec["container"]["image"].startswith("ghcr.io/codepmp/codepmp-gpu")
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    pretrain_k8s = json.dumps(k8s[tasks["pretrain"]["componentRef"]["name"].replace("comp-", "exec-")])
    assert "codepmp-s3" in pretrain_k8s and "/dev/shm" in pretrain_k8s and "h100" in pretrain_k8s
    crawl_k8s = json.dumps(k8s[fan_out["crawl"]["componentRef"]["name"].replace("comp-", "exec-")])
    assert "codepmp-env" in crawl_k8s and "h100" not in crawl_k8s and "codepmp-github" in crawl_k8s
    assert "codepmp-github" not in pretrain_k8s
    for name, executor in k8s.items():  # an MLflow login, when the Secret has one; never required
        logins = [e for e in executor["secretAsEnv"] if e["keyToEnv"][0]["envVar"] == "MLFLOW_TRACKING_USERNAME"]
        assert [(e["secretName"], e["optional"], len(e["keyToEnv"])) for e in logins] == [("codepmp-s3", True, 2)], name
    shards = spec["components"]["comp-for-loop-2"]["dag"]["tasks"]
    assert list(shards) == ["synthesize"]
    assert tasks["for-loop-2"]["parameterIterator"]["items"] == {
        "inputParameter": "pipelinechannel--synthesize-shards-Output"}
    merged = tasks["synthesize-merge"]["inputs"]["artifacts"]["shards"]
    assert merged == {"taskOutputArtifact": {"outputArtifactKey": "pipelinechannel--synthesize-pairs",
                                             "producerTask": "for-loop-2"}}
    synth_k8s = json.dumps(k8s[shards["synthesize"]["componentRef"]["name"].replace("comp-", "exec-")])
    assert "h100" in synth_k8s and "/dev/shm" in synth_k8s
    sweep = spec["components"]["comp-for-loop-3"]["dag"]["tasks"]
    assert sorted(t["taskInfo"]["name"] for t in sweep.values()) == ["sweep-control", "sweep-pmp"]
    assert tasks["for-loop-3"]["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--sweep-points-Output"}
    for task in sweep.values():
        assert "h100" in json.dumps(k8s[task["componentRef"]["name"].replace("comp-", "exec-")])
        # One iteration per (size, seed) item of sweep-points: PMP and control take both from the same item.
        for parameter, key in (("subset", "size"), ("seed", "seed")):
            assert task["inputs"]["parameters"][parameter] == {
                "componentInputParameter": "pipelinechannel--sweep-points-Output-loop-item",
                "parameterExpressionSelector": f'parseJson(string_value)["{key}"]'}


@pytest.mark.integration
def test_manual_promote_cli_on_the_registered_model(tiny_pipeline_run):
    name = tiny_pipeline_run["registered_model"]

    def promote(*args):
        return subprocess.run([sys.executable, "-m", "codepmp.cli", "promote", "--set",
                               f"promote.registered_model={name}", *args], capture_output=True, text=True, timeout=120)

    same = promote("--version", "1")
    if "champion" in mlflow.MlflowClient().get_model_version(name, "1").aliases:
        assert same.returncode == 0 and json.loads(same.stdout)["promoted"] is False  # already the champion
    else:  # the gate made it challenger: unforced, it still has no lead over its control to show
        assert same.returncode == 2 and "cannot take 'champion' unforced" in same.stderr
    missing = promote("--version", "99")
    assert missing.returncode == 2 and "99" in missing.stderr.strip().splitlines()[-1]
    unexplained = promote("--version", "1", "--force")
    assert unexplained.returncode == 2 and "needs who is promoting and why" in unexplained.stderr


def test_multinode_pretrain_compiles_to_a_trainjob_task_without_gpus(tmp_path):
    spec_file = tmp_path / "cluster.yaml"
    spec_file.write_text(yaml.safe_dump({"gpus": 8, "pretrain_nodes": 4, "gpu_node_selector": {"pool": "h100"}}))
    docs = list(yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "p.yaml"), str(spec_file))).read_text()))
    spec, platform = docs[0], docs[1]
    task = spec["root"]["dag"]["tasks"]["pretrain-trainjob"]
    assert task["taskInfo"]["name"] == "pretrain"
    settings = task["inputs"]["parameters"]["trainjob"]["runtimeValue"]["constant"]
    assert (settings["nodes"], settings["gpus_per_node"]) == (4, 8)
    assert settings["image"].startswith("ghcr.io/codepmp/codepmp-gpu") and settings["node_selector"] == {"pool": "h100"}
    executor = spec["deploymentSpec"]["executors"]["exec-pretrain-trainjob"]["container"]
    assert "accelerator" not in executor.get("resources", {})  # the waiting pod holds no GPU
    assert executor["image"].startswith("ghcr.io/codepmp/codepmp-cpu")
    k8s = json.dumps(platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-pretrain-trainjob"])
    assert "codepmp-s3" in k8s and "h100" not in k8s
    finetune = spec["root"]["dag"]["tasks"]["finetune"]
    assert finetune["inputs"]["artifacts"]["init_model"]["taskOutputArtifact"]["producerTask"] == "pretrain-trainjob"
