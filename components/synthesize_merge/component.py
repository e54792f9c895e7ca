"""Merge the synthesis shards (collected from the ParallelFor) into one pairs dataset (see README.md)."""

from typing import List

from kfp import dsl

from codepmp_kfp.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def synthesize_merge(profile: str, overrides: dict, run_name: str, shards: dsl.Input[List[dsl.Dataset]],
                     pairs: dsl.Output[dsl.Dataset]):
    from codepmp import stages

    stages.synthesize_merge(profile, overrides, run_name, shard_dirs=[s.path for s in shards], out_dir=pairs.path)
