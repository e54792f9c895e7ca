"""Reward-model finetuning on reasoning pairs (Bradley-Terry) from a given initial model (see README.md)."""

from kfp import dsl

from components.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def finetune(profile: str, overrides: dict, run_name: str, job_id: str, variant: str,
             init_model: dsl.Input[dsl.Model], data: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model],
             result: dsl.Output[dsl.Artifact], subset: int = 0):
    from codepmp import stages

    stages.finetune(profile, overrides, run_name, init_dir=init_model.path, data_dir=data.path,
                    out_dir=model.path, variant=variant, job_id=job_id, subset=subset, result_path=result.path)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def sweep_sizes(profile: str, overrides: dict) -> list:
    """The finetuning subset sizes of the sample-efficiency sweep (`sweep.sizes`): a ParallelFor's items."""
    from codepmp.config import load_config

    return list(load_config(profile, overrides).sweep.sizes)

