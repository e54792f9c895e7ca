"""Build GSM8K finetuning pairs, dev pairs and the best-of-N candidate pool (see README.md)."""

from kfp import dsl

from codepmp_kfp.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def reasoning_data(profile: str, overrides: dict, run_name: str, data: dsl.Output[dsl.Dataset]):
    from codepmp import stages

    stages.reasoning_data(profile, overrides, run_name, out_dir=data.path)
