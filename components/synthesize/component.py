"""Synthesize (description, chosen, rejected) code preference pairs, one shard per task (see README.md)."""

from kfp import dsl

from codepmp_kfp.components.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def synthesize_shards(profile: str, overrides: dict) -> list:
    """The shards the synthesis fans out to (`synthesize.world_size`): the items of the pipeline's ParallelFor."""
    from codepmp.config import load_config

    return list(range(load_config(profile, overrides).synthesize.world_size))


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def synthesize(profile: str, overrides: dict, run_name: str, rank: int, shards: dsl.Input[dsl.Dataset],
               pairs: dsl.Output[dsl.Dataset]):
    from codepmp import stages

    stages.synthesize(profile, overrides, run_name, crawl_dir=shards.path, out_dir=pairs.path, rank=rank)
