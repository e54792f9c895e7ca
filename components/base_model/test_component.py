from pathlib import Path

import pytest
from kfp import dsl

from codepmp_kfp.components.base_model.component import base_model


@pytest.mark.integration
def test_python_func(stack_env, tiny_overrides, tiny_lm, tmp_path):
    out = dsl.Model(uri=str(tmp_path / "model"))
    base_model.python_func(profile="tiny", overrides=tiny_overrides, run_name="t1", model=out)
    assert sorted(p.name for p in Path(out.path).iterdir()) == sorted(p.name for p in Path(tiny_lm).iterdir())


@pytest.mark.integration
def test_missing_model_folder_is_a_clear_error(stack_env, tiny_overrides, tmp_path, capsys):
    with pytest.raises(SystemExit):
        base_model.python_func(profile="tiny", overrides={**tiny_overrides, "base_model": str(tmp_path)},
                               run_name="t1", model=dsl.Model(uri=str(tmp_path / "m")))
    assert "has no config.json" in capsys.readouterr().err


@pytest.mark.integration
def test_kfp_local(local_chain):
    """The artifact is the tiny profile's base model, file for file."""
    from codepmp.config import load_config
    from codepmp.models import resolve

    artifact, source = local_chain["base_model"] / "model", Path(resolve(load_config("tiny").base_model))
    names = sorted(p.name for p in source.iterdir() if p.is_file())
    assert "config.json" in names and sorted(p.name for p in artifact.iterdir() if p.is_file()) == names
    assert all((artifact / name).read_bytes() == (source / name).read_bytes() for name in names)
