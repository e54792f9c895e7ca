import re

import pytest

from codepmp.config import PROFILES, load_config, parse_set
from codepmp.errors import ConfigError


@pytest.mark.parametrize("profile", list(PROFILES))
def test_profiles_load(profile):
    cfg = load_config(profile)
    assert cfg.profile == profile
    assert cfg.finetune.lm_coef == 0.0  # finetuning is pure Bradley-Terry in every profile


def test_paper_profile_has_paper_hyperparameters():
    cfg = load_config("paper")
    assert cfg.base_model == "Qwen/Qwen2-1.5B"
    assert (cfg.pretrain.lr, cfg.pretrain.max_length, cfg.pretrain.weight_decay) == (1e-6, 1024, 0.1)
    assert (cfg.pretrain.rm_coef, cfg.pretrain.lm_coef) == (1.0, 1.0)
    assert cfg.synthesize.strong_model.endswith("deepseek-coder-6.7b-instruct")
    assert cfg.pretrain.deepspeed_stage == 2


def test_overrides_apply_and_coerce_json_numbers():
    cfg = load_config("tiny", {"pretrain": {"lr": 1, "batch_size": 8.0}, "evaluate": {"best_of_n": [1.0, 2.0]}})
    assert cfg.pretrain.lr == 1.0 and isinstance(cfg.pretrain.lr, float)
    assert cfg.pretrain.batch_size == 8 and isinstance(cfg.pretrain.batch_size, int)
    assert cfg.evaluate.best_of_n == [1, 2]


@pytest.mark.parametrize("overrides, needle", [
    ({"pretrain": {"lrr": 1}}, "pretrain.lrr"),
    ({"nope": 1}, "'nope'"),
    ({"pretrain": {"batch_size": "big"}}, "pretrain.batch_size"),
    ({"pretrain": 3}, "must be a mapping"),
    ({"pretrain": {"bf16": 1}}, "pretrain.bf16"),
])
def test_bad_overrides_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config("local", overrides)


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        load_config("huge")


def test_parse_set():
    assert parse_set(["pretrain.lr=1e-5", "base_model=foo/bar", "evaluate.best_of_n=[1,2]"]) == {
        "pretrain": {"lr": 1e-5}, "base_model": "foo/bar", "evaluate": {"best_of_n": [1, 2]}}
    with pytest.raises(ConfigError):
        parse_set(["novalue"])


def test_sweep_seeds_default_to_one_and_the_paper_runs_three():
    assert load_config("local").sweep.seeds == [0] and load_config("tiny").sweep.seeds == [0]
    assert load_config("paper").sweep.seeds == [123, 124, 125]
    assert load_config("local", {"sweep": {"seeds": [1.0, 2]}}).sweep.seeds == [1, 2]  # KFP's JSON floats


@pytest.mark.parametrize("sweep, needle", [
    ({"seeds": []}, r"'sweep.seeds' needs at least one seed, each >= 0, got \[\]"),
    ({"seeds": [3, -1]}, r"'sweep.seeds' needs at least one seed, each >= 0, got \[3, -1\]"),
    ({"seeds": [7, 7, 8]}, r"'sweep.seeds' repeats \[7\]"),
    ({"sizes": [8, 24, 8]}, r"'sweep.sizes' repeats \[8\]"),
    ({"seeds": ["a"]}, r"'sweep.seeds' expects int"),
])
def test_bad_sweep_seeds_name_the_key(sweep, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("local", {"sweep": sweep})


def test_local_and_qwen_profiles_evaluate_on_the_shipped_policy_samples():
    import json

    from codepmp.reasoning.policy_samples import PROVENANCE, SHIPPED_DIR

    shipped = json.loads((SHIPPED_DIR / PROVENANCE).read_text())["files"]["gsm8k_dev"]["problems"]
    for name in ("local", "qwen"):
        cfg = load_config(name)
        assert cfg.reasoning.pool == "shipped" and cfg.reasoning.domains == ["gsm8k"]
        assert cfg.reasoning.dev_problems <= shipped  # the profile runs on what the package ships
    qwen = load_config("qwen")
    assert qwen.base_model == "qwen2.5-coder-0.5b-instruct" and qwen.reasoning.policy_model.endswith("1.5b-instruct")
    assert (qwen.synthesize.strong_model, qwen.synthesize.weak_model) == ("qwen2.5-coder-1.5b-instruct",
                                                                         "qwen2.5-coder-0.5b-instruct")


def _declared_nonnegative(obj, where=""):
    """(key path, current value) of every field declared `nonnegative`, nested sections included."""
    import dataclasses

    for f in dataclasses.fields(obj):
        value, path = getattr(obj, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            yield from _declared_nonnegative(value, path)
        elif f.metadata.get("nonnegative"):
            yield path, value


def _nested(path: str, value) -> dict:
    *sections, key = path.split(".")
    out = {key: value}
    for section in reversed(sections):
        out = {section: out}
    return out


def test_every_field_declared_nonnegative_refuses_a_negative_value_and_takes_zero():
    from codepmp.config import PipelineConfig

    declared = list(_declared_nonnegative(PipelineConfig()))
    assert len(declared) >= 40  # counts and sizes of every section
    for path, value in declared:
        negative, zero = ([-1], [0]) if isinstance(value, list) else (-1, 0)
        with pytest.raises(ConfigError, match=f"'{re.escape(path)}' must not be negative"):
            load_config("local", _nested(path, negative))
        assert load_config("local", _nested(path, zero)) is not None
