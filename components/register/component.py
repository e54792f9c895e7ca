"""Register the PMP reward model in MLflow and move the champion alias if it wins the gate (see README.md)."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(profile: str, overrides: dict, run_name: str, model: dsl.Input[dsl.Model],
             results: dsl.Input[dsl.Artifact]) -> str:
    import json

    from codepmp import stages

    return json.dumps(stages.register(profile, overrides, run_name, model_dir=model.path,
                                      results_path=results.path))
