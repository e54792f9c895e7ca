"""Fixtures for the two test tiers of every component, on a tiny random model and the private stack:

- tier 1 calls the component's Python function directly (`component.python_func`);
- tier 2 runs the component through `kfp.local` as a subprocess, inside the session's one local run of
  the pipeline DAG at the `tiny` profile (each task's outputs feed the next, as on a cluster).

    .venv/bin/python -m pytest components -q

pytest imports these test modules by their folders (`components.crawl.test_component`, the repository root put
on sys.path); the code under test they import as `codepmp_kfp.components.…`, its installed name, which needs
codepmp installed: the editable install of `make install` (and so of `make test`) maps it to these folders.
"""

from __future__ import annotations

import pytest

from codepmp.testing import TINY_PAIR_MAX_LENGTH


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    from codepmp.testing import write_tiny_model

    return str(write_tiny_model(tmp_path_factory.mktemp("tiny-lm") / "model", reward=False))


@pytest.fixture(scope="session")
def tiny_overrides(tiny_lm) -> dict:
    """The `tiny` profile with every model swapped for the tiny random one: seconds per stage."""
    return {
        "base_model": tiny_lm,
        "experiment": "codepmp-component-tests",
        "crawl": {"max_files": 6},
        "synthesize": {"summarizer_model": tiny_lm, "strong_model": tiny_lm, "weak_model": tiny_lm,
                       "max_pairs": 4, "description_tokens": 8, "code_tokens": 8},
        "pretrain": {"max_length": TINY_PAIR_MAX_LENGTH},
        "finetune": {"max_length": 192},  # GSM8K questions alone run past 64 tokens
        "evaluate": {"max_length": 384},  # scoring keeps whole prompts (the longest tiny-tokenized one: 242)
        "promote": {"registered_model": "codepmp-component-tests"},
    }


@pytest.fixture(scope="session")
def local_chain(tiny_pipeline_run) -> dict:
    """Task folders of the session's kfp.local run of the pipeline (see the root conftest.py).

    kfp.local runs a lone component only on parameter inputs, so the tier-2 tests share one run of the
    real DAG and each checks its own component's outputs under `<task folder>/<output name>`.
    """
    return tiny_pipeline_run["tasks"]


@pytest.fixture(scope="session")
def reasoning_dir(tmp_path_factory) -> str:
    from codepmp.config import load_config
    from codepmp.reasoning.build import build_reasoning_data

    out = tmp_path_factory.mktemp("reasoning")
    build_reasoning_data(load_config("tiny").reasoning, out)
    return str(out)


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory) -> str:
    """A small pairs.parquet in the synthesize stage's format."""
    import pyarrow as pa

    from codepmp.atomic import write_table

    out = tmp_path_factory.mktemp("pairs")
    rows = [{"id": str(i), "language": "python", "code": f"def f{i}(): return {i}\n",
             "description": f"Return the number {i}.", "chosen": f"def f{i}():\n    return {i}\n",
             "rejected": f"f{i} = None"} for i in range(4)]
    write_table(pa.Table.from_pylist(rows), out / "pairs.parquet")
    return str(out)
