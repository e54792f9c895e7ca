"""Evaluate the PMP reward model against the control on every reasoning domain, with CIs (see README.md)."""

from kfp import dsl

from codepmp_kfp.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(profile: str, overrides: dict, run_name: str, pmp_model: dsl.Input[dsl.Model],
             control_model: dsl.Input[dsl.Model], data: dsl.Input[dsl.Dataset], sweep: dsl.Input[dsl.Artifact],
             metrics: dsl.Output[dsl.Metrics], report: dsl.Output[dsl.HTML], results: dsl.Output[dsl.Artifact]):
    from codepmp import stages

    flat = stages.evaluate(profile, overrides, run_name, models={"pmp": pmp_model.path, "control": control_model.path},
                           data_dir=data.path, report_path=report.path, results_path=results.path,
                           sweep_path=sweep.path)
    for key, value in flat.items():
        if isinstance(value, (int, float)) and "_ci_" not in key and ".bon" not in key:
            metrics.log_metric(key, value)
