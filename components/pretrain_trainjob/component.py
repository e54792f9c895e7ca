"""PMP across several nodes: creates a Kubeflow Trainer TrainJob, waits for it, outputs its model (see README.md)."""

from kfp import dsl

from codepmp_kfp.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def pretrain_trainjob(profile: str, overrides: dict, run_name: str, job_id: str, trainjob: dict,
                      base: dsl.Input[dsl.Model], pairs: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model]):
    from codepmp import stages

    stages.pretrain_trainjob(profile, overrides, run_name, base_dir=base.path, pairs_dir=pairs.path,
                             out_dir=model.path, job_id=job_id, trainjob=trainjob)
