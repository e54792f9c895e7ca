"""Preference-model pretraining (PMP) on code pairs: pairwise + LM loss, resumable (see README.md)."""

from kfp import dsl

from codepmp_kfp.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def pretrain(profile: str, overrides: dict, run_name: str, job_id: str, base: dsl.Input[dsl.Model],
             pairs: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model]):
    from codepmp import stages

    stages.pretrain(profile, overrides, run_name, base_dir=base.path, pairs_dir=pairs.path, out_dir=model.path,
                    job_id=job_id)
