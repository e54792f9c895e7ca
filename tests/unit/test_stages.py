"""The stage registry (`codepmp.stages.STAGES`) and what reads it: the CLI's stage subcommands, the params a
stage's MLflow run records, the run summary's order."""

import dataclasses

import pytest

from codepmp import stages
from codepmp.cli import build_parser
from codepmp.config import PipelineConfig, load_config
from codepmp.stages import STAGES


def test_every_stage_is_registered_once_in_pipeline_order_and_callable():
    assert list(STAGES)[:6] == ["crawl", "crawl_merge", "synthesize", "synthesize_merge", "base_model",
                                "reasoning_data"]
    assert list(STAGES)[-2:] == ["evaluate", "register"]
    for name, spec in STAGES.items():
        assert spec.name == name and callable(getattr(stages, name))


def test_every_section_is_a_config_section():
    sections = {f.name for f in dataclasses.fields(PipelineConfig)}
    for spec in STAGES.values():
        assert spec.section == "" or spec.section in sections, spec


def test_a_stage_logs_its_own_section_as_params():
    params = stages._section_params(load_config("tiny"), STAGES["finetune"].section)
    assert params["base_model"] == load_config("tiny").base_model
    assert "finetune.lr" in params and not any(key.startswith("pretrain.") for key in params)
    assert stages._section_params(load_config("tiny"), STAGES["base_model"].section) == {
        "base_model": load_config("tiny").base_model}


def test_the_cli_has_a_subcommand_for_each_stage_with_folder_options_and_maps_them():
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    with_cli = {spec.name.replace("_", "-") for spec in STAGES.values() if spec.cli}
    assert with_cli <= commands and {"crawl", "pretrain", "finetune"} <= with_cli
    assert "sample-efficiency" not in commands  # a stage without folder options has no subcommand
    args = parser.parse_args(["crawl", "--out", "/tmp/c", "--rank", "1"])
    options = {option: getattr(args, option) for option in STAGES["crawl"].cli}
    assert STAGES["crawl"].from_cli(options) == {"location": "/tmp/c", "rank": 1}
    args = parser.parse_args(["synthesize", "--crawl", "/tmp/c", "--out", "/tmp/s"])
    options = {option: getattr(args, option) for option in STAGES["synthesize"].cli}
    assert STAGES["synthesize"].from_cli(options) == {"crawl_dir": "/tmp/c", "out_dir": "/tmp/s",
                                                      "location": "/tmp/s/cache"}
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--init", "a", "--data", "b", "--out", "c", "--variant", "other"])


def test_only_pure_stages_are_cached_and_the_training_stages_take_a_gpu():
    assert {name for name, spec in STAGES.items() if spec.cached} == {"base_model", "reasoning_data"}
    assert {name for name, spec in STAGES.items() if spec.gpu} == {"synthesize", "pretrain", "finetune"}
