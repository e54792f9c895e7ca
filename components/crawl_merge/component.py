"""Merge the finished crawl ranks into one manifest: cross-rank dedup, `max_files`, totals (see README.md)."""

from kfp import dsl

from codepmp_kfp.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def crawl_merge(profile: str, overrides: dict, run_name: str, shards: dsl.Output[dsl.Dataset]):
    from codepmp import stages

    stages.crawl_merge(profile, overrides, run_name, out_dir=shards.path)
