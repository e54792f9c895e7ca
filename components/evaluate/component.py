"""Evaluate the PMP reward model against the control side by side (see README.md)."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(profile: str, overrides: dict, run_name: str, pmp_model: dsl.Input[dsl.Model],
             control_model: dsl.Input[dsl.Model], data: dsl.Input[dsl.Dataset], metrics: dsl.Output[dsl.Metrics],
             report: dsl.Output[dsl.Markdown], results: dsl.Output[dsl.Artifact]):
    from codepmp import stages

    flat = stages.evaluate(profile, overrides, run_name, models={"pmp": pmp_model.path, "control": control_model.path},
                           data_dir=data.path, report_path=report.path, results_path=results.path)
    for key, value in flat.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(key, value)
