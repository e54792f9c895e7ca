"""The codepmp pipeline DAG: crawl -> synthesize (both fanned out over shards) -> pretrain -> finetune (PMP and
control; and the sample-efficiency sweep, fanned out over subset sizes and seeds) -> evaluate -> register.

    codepmp compile --out build/codepmp.yaml     # or `make compile`

Three pipeline parameters only: `profile` (tiny | local | paper), `overrides` (a nested dict over the
profile, e.g. {"pretrain": {"lr": 1e-6}}) and `run_name` (groups MLflow runs and object-store checkpoints).
Kubernetes placement (GPU pools, secrets, /dev/shm) is applied by `cluster.apply` at compile time only,
so the same DAG runs unchanged under kfp.local.
"""

from kfp import dsl

from codepmp.stages import STAGES, StageSpec
from codepmp_kfp.components.base_model.component import base_model
from codepmp_kfp.components.crawl.component import crawl, crawl_ranks
from codepmp_kfp.components.crawl_merge.component import crawl_merge
from codepmp_kfp.components.evaluate.component import evaluate
from codepmp_kfp.components.finetune.component import finetune, sweep_points
from codepmp_kfp.components.images import GPU_IMAGE
from codepmp_kfp.components.pretrain.component import pretrain
from codepmp_kfp.components.pretrain_trainjob.component import pretrain_trainjob
from codepmp_kfp.components.reasoning_data.component import reasoning_data
from codepmp_kfp.components.sample_efficiency.component import sample_efficiency
from codepmp_kfp.components.register.component import register
from codepmp_kfp.components.synthesize.component import synthesize, synthesize_shards
from codepmp_kfp.components.synthesize_merge.component import synthesize_merge
from codepmp_kfp.pipelines.cluster import ClusterSpec, apply, check_task_names

HELPERS = {"crawl_ranks", "synthesize_shards", "sweep_points"}
"""Components that are no stage: pure functions of the profile (a fan-out's items), so KFP may reuse them.
Every other task is a stage, and the registry (`codepmp.stages.STAGES`) says whether it is cached and on a GPU."""


def stage_of(component: str) -> StageSpec | None:
    """The registered stage a component runs (a component name, e.g. crawl-merge), None for a helper; a
    component that is neither fails the compile, as it would have no caching or GPU choice."""
    name = component.replace("-", "_")
    if name in HELPERS:
        return None
    if name not in STAGES:
        raise AssertionError(f"component {component} is neither a registered stage nor a helper: no caching choice")
    return STAGES[name]


def task_caching(component: str) -> bool:
    """Whether KFP may reuse an earlier result of a task of `component`: helpers always, stages as registered."""
    spec = stage_of(component)
    return spec is None or spec.cached


def build(cluster: "ClusterSpec | None" = None):
    """Return the pipeline function; with a ClusterSpec every task gets its Kubernetes settings."""

    @dsl.pipeline(name="codepmp", description="CodePMP: code preference pairs -> PMP -> reward model -> "
                                              "best-of-N evaluation -> MLflow registry")
    def codepmp(profile: str = "local", overrides: dict = {}, run_name: str = "codepmp"):  # noqa: B006
        common = {"profile": profile, "overrides": overrides, "run_name": run_name}
        # Under kfp.local every task of a fan-out shares one machine and each uses all its cores (torch threads),
        # so they run one at a time: two sweep finetunes at once on 2 cores took 4x as long as one after another.
        crawl_parallelism = cluster.crawl_parallelism if cluster is not None else 1
        synthesize_parallelism = cluster.synthesize_parallelism if cluster is not None else 1
        multinode = cluster is not None and cluster.pretrain_nodes > 1
        sweep_parallelism = cluster.sweep_parallelism if cluster is not None else 1
        # Training checkpoints are scoped to the job, so a retried pod resumes and a new run never does.
        training = {**common, "job_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        tasks = {}
        tasks["crawl_ranks"] = crawl_ranks(profile=profile, overrides=overrides)
        with dsl.ParallelFor(tasks["crawl_ranks"].output, parallelism=crawl_parallelism) as rank:
            tasks["crawl"] = crawl(**common, rank=rank)
        tasks["crawl_merge"] = crawl_merge(**common).after(tasks["crawl"])
        tasks["synthesize_shards"] = synthesize_shards(profile=profile, overrides=overrides)
        with dsl.ParallelFor(tasks["synthesize_shards"].output, parallelism=synthesize_parallelism) as shard:
            tasks["synthesize"] = synthesize(**common, rank=shard, shards=tasks["crawl_merge"].outputs["shards"])
        tasks["synthesize_merge"] = synthesize_merge(**common,
                                                     shards=dsl.Collected(tasks["synthesize"].outputs["pairs"]))
        tasks["base_model"] = base_model(**common)
        tasks["reasoning_data"] = reasoning_data(**common)
        pretrain_inputs = {"base": tasks["base_model"].outputs["model"],
                           "pairs": tasks["synthesize_merge"].outputs["pairs"]}
        if multinode:
            tasks["pretrain"] = pretrain_trainjob(**training, **pretrain_inputs,
                                                  trainjob=cluster.trainjob_settings(GPU_IMAGE))
        else:
            tasks["pretrain"] = pretrain(**training, **pretrain_inputs)
        data = tasks["reasoning_data"].outputs["data"]
        tasks["finetune-pmp"] = finetune(**training, variant="pmp", init_model=tasks["pretrain"].outputs["model"],
                                         data=data)
        tasks["finetune-control"] = finetune(**training, variant="control",
                                             init_model=tasks["base_model"].outputs["model"], data=data)
        tasks["sweep_points"] = sweep_points(profile=profile, overrides=overrides)
        # One iteration per (size, seed): PMP and control of a point share its seed, hence its subset.
        with dsl.ParallelFor(tasks["sweep_points"].output, parallelism=sweep_parallelism) as point:
            tasks["sweep-pmp"] = finetune(**training, variant="pmp", subset=point.size, seed=point.seed, data=data,
                                          init_model=tasks["pretrain"].outputs["model"])
            tasks["sweep-control"] = finetune(**training, variant="control", subset=point.size, seed=point.seed,
                                              data=data, init_model=tasks["base_model"].outputs["model"])
        tasks["sample_efficiency"] = sample_efficiency(
            **common, pmp_results=dsl.Collected(tasks["sweep-pmp"].outputs["result"]),
            control_results=dsl.Collected(tasks["sweep-control"].outputs["result"]))
        tasks["evaluate"] = evaluate(**common, pmp_model=tasks["finetune-pmp"].outputs["model"],
                                     control_model=tasks["finetune-control"].outputs["model"], data=data,
                                     sweep=tasks["sample_efficiency"].outputs["table"])
        tasks["register"] = register(**training, model=tasks["finetune-pmp"].outputs["model"],
                                     results=tasks["evaluate"].outputs["results"], data=data)
        if cluster is not None:
            check_task_names(cluster, set(tasks))
        for name, task in tasks.items():
            task.set_display_name(name)
            spec = stage_of(task.component_spec.name)
            if cluster is not None:
                # A multi-node pretrain task only waits for its TrainJob; the job's pods take the GPUs.
                trainjob = name == "pretrain" and multinode
                apply(task, name, cluster, gpu=bool(spec and spec.gpu), github=name == "crawl", trainjob=trainjob)
            task.set_caching_options(spec is None or spec.cached)

    return codepmp
