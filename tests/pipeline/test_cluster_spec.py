"""The compiled pipeline carries the cluster spec: images, per-task resources, retries; bad specs fail clearly."""

import json
from pathlib import Path

import pytest
import yaml

from codepmp.errors import ConfigError
from codepmp_kfp.pipelines.run import compile_pipeline


def _compile(tmp_path, spec: dict):
    spec_file = tmp_path / "cluster.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    docs = list(yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "p.yaml"), str(spec_file))).read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of the compiled DAG, loops included, by display name."""
    tasks = {}
    for dag in [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]:
        for task in dag["tasks"].values():
            tasks[task["taskInfo"]["name"]] = task
    return tasks


def test_images_resources_and_retries_come_from_the_spec(tmp_path):
    spec, k8s = _compile(tmp_path, {
        "cpu_image": "registry.example/team/codepmp-cpu:1.2.3", "gpu_image": "registry.example/team/codepmp-gpu:1.2.3",
        "cpu_request": 3, "resources": {"evaluate": {"cpu": "8", "memory": "32G", "memory_limit": "40G"}},
        "retries": 3, "retry_backoff": "30s"})
    tasks = _all_tasks(spec)
    executors = spec["deploymentSpec"]["executors"]

    def container(name):
        return executors[tasks[name]["componentRef"]["name"].replace("comp-", "exec-")]["container"]

    for name in ("pretrain", "finetune-pmp", "synthesize", "sweep-pmp"):
        assert container(name)["image"] == "registry.example/team/codepmp-gpu:1.2.3", name
    for name in ("crawl", "evaluate", "register", "reasoning_data"):
        assert container(name)["image"] == "registry.example/team/codepmp-cpu:1.2.3", name
    evaluate = container("evaluate")["resources"]
    assert (evaluate["resourceCpuRequest"], evaluate["resourceMemoryRequest"]) == ("8", "32G")
    assert evaluate["resourceMemoryLimit"] == "40G"
    assert container("crawl")["resources"]["resourceCpuRequest"] == "3"
    for name, task in tasks.items():
        if name.startswith("for-loop"):
            continue
        if name == "register":
            assert "retryPolicy" not in task  # a retry would register a second model version
        else:
            assert task["retryPolicy"]["maxRetryCount"] == 3, name
            assert task["retryPolicy"]["backoffDuration"] == "30s", name
    assert "registry.example" not in json.dumps(k8s)  # images live in the pipeline spec, not in k8s config


def test_multinode_trainjob_takes_the_spec_gpu_image(tmp_path):
    spec, _ = _compile(tmp_path, {"gpu_image": "registry.example/gpu:9", "pretrain_nodes": 2})
    settings = spec["root"]["dag"]["tasks"]["pretrain-trainjob"]["inputs"]["parameters"]["trainjob"]
    assert settings["runtimeValue"]["constant"]["image"] == "registry.example/gpu:9"


@pytest.mark.parametrize("spec, message", [
    ({"gpu": 2}, "unknown cluster spec field 'gpu'"),
    ({"gpus": "two"}, "'gpus' must be of type int"),
    ({"gpu_node_selector": ["pool"]}, "'gpu_node_selector' must be of type dict"),
    ({"resources": {"evalute": {"cpu": "8"}}}, "unknown tasks ['evalute']"),
    ({"resources": {"evaluate": {"cpus": "8"}}}, "resources.evaluate has unknown keys ['cpus']"),
])
def test_bad_cluster_specs_are_rejected_with_the_field_named(tmp_path, spec, message):
    with pytest.raises(ConfigError) as error:
        _compile(tmp_path, spec)
    assert message in str(error.value)


def _function_of(spec: dict, task: dict) -> str:
    """The Python function a compiled task runs (a component reused in the DAG gets a suffixed name)."""
    executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    args = spec["deploymentSpec"]["executors"][executor]["container"]["args"]
    return args[args.index("--function_to_execute") + 1]


def test_every_task_has_an_explicit_caching_choice(tmp_path):
    from codepmp_kfp.pipelines.pipeline import task_caching

    spec, _ = _compile(tmp_path, {})
    tasks = {name: task for name, task in _all_tasks(spec).items() if not name.startswith("for-loop")}
    caching = {name: task_caching(_function_of(spec, task)) for name, task in tasks.items()}
    for name, task in tasks.items():
        assert task.get("cachingOptions", {}).get("enableCache", False) is caching[name], name
    assert caching["register"] is False and caching["crawl_ranks"] is True
    assert caching["base_model"] is True and caching["finetune-pmp"] is False and caching["sweep-control"] is False
    with pytest.raises(AssertionError, match="neither a registered stage nor a helper"):
        task_caching("unregistered-step")
