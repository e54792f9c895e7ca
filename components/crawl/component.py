"""Crawl source code into filtered, decontaminated, deduplicated Parquet shards, one rank per task (see README.md)."""

from kfp import dsl

from codepmp_kfp.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def crawl_ranks(profile: str, overrides: dict) -> list:
    """The ranks the crawl fans out to (`crawl.world_size`): the items of the pipeline's ParallelFor."""
    from codepmp.config import load_config

    return list(range(load_config(profile, overrides).crawl.world_size))


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def crawl(profile: str, overrides: dict, run_name: str, rank: int) -> dict:
    from codepmp import stages

    return stages.crawl(profile, overrides, run_name, rank=rank)
