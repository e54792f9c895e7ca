"""Resolve the base LM (packaged alias, HF folder, hub id or s3:// folder) into a Model artifact."""

from kfp import dsl

from codepmp_kfp.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def base_model(profile: str, overrides: dict, run_name: str, model: dsl.Output[dsl.Model]):
    from codepmp import stages

    stages.base_model(profile, overrides, run_name, out_dir=model.path)
