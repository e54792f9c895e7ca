"""Sample-efficiency curve of the finetuning sweep: PMP vs control, by finetuning pairs (see README.md)."""

from kfp import dsl

from codepmp_kfp.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def sample_efficiency(profile: str, overrides: dict, run_name: str, pmp_results: dsl.Input[list[dsl.Artifact]],
                      control_results: dsl.Input[list[dsl.Artifact]], report: dsl.Output[dsl.Markdown],
                      table: dsl.Output[dsl.Artifact]):
    """Dev pairwise accuracy vs finetuning pairs, PMP against control, as a table in the Kubeflow UI; `table`
    holds the same rows as JSON for the evaluation report."""
    from codepmp import stages

    stages.sample_efficiency(profile, overrides, run_name, report_path=report.path, table_path=table.path,
                             result_paths=[r.path for r in [*pmp_results, *control_results]])
