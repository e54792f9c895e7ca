"""Register the PMP reward model in MLflow; the champion alias moves only past the gate (see README.md)."""

from kfp import dsl

from codepmp_kfp.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(profile: str, overrides: dict, run_name: str, job_id: str, model: dsl.Input[dsl.Model],
             results: dsl.Input[dsl.Artifact], data: dsl.Input[dsl.Dataset]) -> str:
    import json

    from codepmp import stages

    return json.dumps(stages.register(profile, overrides, run_name, model_dir=model.path, results_path=results.path,
                                      data_dir=data.path, job_id=job_id))
