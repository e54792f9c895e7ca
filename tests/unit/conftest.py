"""Fixtures shared by the unit tests of the synthesize and generate packages: tiny random language models."""

import pytest

from codepmp.testing import write_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("synth-lm") / "lm"))
