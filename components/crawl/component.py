"""Crawl source code into filtered, deduplicated Parquet shards (see README.md)."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def crawl(profile: str, overrides: dict, run_name: str, shards: dsl.Output[dsl.Dataset]):
    from codepmp import stages

    stages.crawl(profile, overrides, run_name, out_dir=shards.path)
