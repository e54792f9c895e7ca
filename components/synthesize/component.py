"""Synthesize (description, chosen, rejected) code preference pairs from crawled shards (see README.md)."""

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def synthesize(profile: str, overrides: dict, run_name: str, shards: dsl.Input[dsl.Dataset],
               pairs: dsl.Output[dsl.Dataset]):
    from codepmp import stages

    stages.synthesize(profile, overrides, run_name, crawl_dir=shards.path, out_dir=pairs.path)
