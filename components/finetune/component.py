"""Reward-model finetuning on reasoning pairs (Bradley-Terry) from a given initial model (see README.md)."""

from kfp import dsl

from codepmp_kfp.components.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def finetune(profile: str, overrides: dict, run_name: str, job_id: str, variant: str,
             init_model: dsl.Input[dsl.Model], data: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model],
             result: dsl.Output[dsl.Artifact], subset: int = 0, seed: int = -1):
    """`seed` -1 trains with `finetune.seed`; a sweep task passes its seed of `sweep.seeds` (an int, not None:
    kfp.local cannot pass None for an int parameter)."""
    from codepmp import stages

    stages.finetune(profile, overrides, run_name, init_dir=init_model.path, data_dir=data.path,
                    out_dir=model.path, variant=variant, job_id=job_id, subset=subset, result_path=result.path,
                    seed=seed)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def sweep_points(profile: str, overrides: dict) -> list:
    """The sample-efficiency sweep's tasks, one {"size", "seed"} per subset size (`sweep.sizes`) and seed
    (`sweep.seeds`): a ParallelFor's items."""
    from codepmp.config import load_config

    sweep = load_config(profile, overrides).sweep
    return [{"size": size, "seed": seed} for size in sweep.sizes for seed in sweep.seeds]
