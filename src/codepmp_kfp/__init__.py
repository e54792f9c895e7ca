"""The KFP side of codepmp under a name of its own: `codepmp_kfp.components` (one subpackage per pipeline
component) and `codepmp_kfp.pipelines` (the DAG, its cluster placement, compile/submit/run).

Their sources stay in the repository's top-level components/ and pipelines/ folders; setup.py maps those
folders here, so an installed codepmp adds no top-level `components` or `pipelines` that could shadow, or be
shadowed by, another distribution's package of that name.
"""
