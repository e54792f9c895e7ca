"""Fixtures of the train package's tests: a tiny random Llama (no reward head yet)."""

import pytest

from codepmp.testing import write_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", reward=False, seed=0))
