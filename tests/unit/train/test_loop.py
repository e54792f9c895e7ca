"""The training loop on a tiny random Llama: golden loss, batch layouts that train alike, DeepSpeed ZeRO and
ZeRO-Offload against plain torch, compiled layers, skipped pairs."""

import pytest
import torch

from codepmp.config import TrainConfig
from codepmp.models import load_reward_model
from codepmp.pairs import Pair
from codepmp.train.data import collate
from codepmp.train.loop import train
from codepmp.train.model import PreferenceModel
from tests.unit.train.helpers import CFG, PAIRS


# Recorded from this exact setup; a change here means the loss, schedule, data order or model changed.
GOLDEN_FINAL_LOSS = 6.44096


def test_packed_training_follows_padded_training(tiny_model, tmp_path):
    padded, packed = [], []
    train(CFG, tiny_model, PAIRS, tmp_path / "padded", log=lambda m, s: padded.append(m), progress=False)
    cfg = TrainConfig(**{**CFG.__dict__, "packing": True, "shared_prefix": False})
    train(cfg, tiny_model, PAIRS, tmp_path / "packed", log=lambda m, s: packed.append(m), progress=False)
    assert [m["loss"] for m in packed] == pytest.approx([m["loss"] for m in padded], rel=1e-4)
    # Throughput counts real tokens only, so the two layouts report the same work.
    assert packed[-1]["tokens_per_s"] / packed[-1]["samples_per_s"] == pytest.approx(
        padded[-1]["tokens_per_s"] / padded[-1]["samples_per_s"])


def test_pair_tree_training_follows_padded_training_and_refuses_packing_too(tiny_model, tmp_path, capsys):
    from codepmp.errors import ConfigError
    from codepmp.train.loop import _batch_layout

    padded, trees = [], []
    assert CFG.shared_prefix  # the default layout
    train(CFG, tiny_model, PAIRS, tmp_path / "trees", log=lambda m, s: trees.append(m), progress=False)
    cfg = TrainConfig(**{**CFG.__dict__, "shared_prefix": False})
    train(cfg, tiny_model, PAIRS, tmp_path / "padded", log=lambda m, s: padded.append(m), progress=False)
    assert [m["loss"] for m in trees] == pytest.approx([m["loss"] for m in padded], rel=1e-4)
    with pytest.raises(ConfigError, match="packing and shared_prefix"):
        train(TrainConfig(**{**CFG.__dict__, "packing": True}), tiny_model, PAIRS, tmp_path / "both",
              progress=False)
    model = PreferenceModel.load(tiny_model, with_lm_head=False)
    model.reward_model.config.sliding_window = 16
    assert _batch_layout(CFG, model)[0] is collate
    assert "shared_prefix off, padded rows instead: its sliding window (16) is shorter than max_length 64" in \
        capsys.readouterr().out


def test_golden_loss_and_saved_model_loads(tiny_model, tmp_path):
    history = []
    summary = train(CFG, tiny_model, PAIRS, tmp_path / "out", log=lambda m, s: history.append(m), progress=False)
    assert summary["steps"] == 2 and len(history) == 2
    assert history[0]["lm_loss"] > 0 and history[0]["lr"] == pytest.approx(1e-3)
    assert summary["final_loss"] == pytest.approx(GOLDEN_FINAL_LOSS, abs=1e-4)
    reloaded, _ = load_reward_model(str(tmp_path / "out"))
    assert reloaded.config.problem_type == "regression" and reloaded.config.num_labels == 1


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_matches_plain_torch(tiny_model, tmp_path, stage):
    """With 2 micro-batches per step: ZeRO-3 accumulates them only when the forward goes through the engine."""
    plain, ds = [], []
    train(CFG, tiny_model, PAIRS, tmp_path / "plain", log=lambda m, s: plain.append(m["loss"]), progress=False)
    cfg = TrainConfig(**{**CFG.__dict__, "deepspeed_stage": stage})
    train(cfg, tiny_model, PAIRS, tmp_path / "ds", log=lambda m, s: ds.append(m["loss"]), progress=False)
    assert len(ds) == len(plain) == 2
    assert ds == pytest.approx(plain, rel=1e-3)
    from deepspeed.comm import comm

    assert comm.cdb.shm_comm_op is None  # gloo alone on CPU: no shared-memory kernel compiled at first init
    trained, reference = load_reward_model(str(tmp_path / "ds"))[0], load_reward_model(str(tmp_path / "plain"))[0]
    for (name, a), b in zip(trained.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=name)


def test_zero_offload_trains_like_plain_torch(tiny_model, tmp_path):
    """ZeRO-Offload with the loop's optimizer: DeepSpeed rejects a torch optimizer there, so the loop hands it
    DeepSpeed's CPU AdamW, which must take the same steps as torch's AdamW."""
    plain, offload = [], []
    train(CFG, tiny_model, PAIRS, tmp_path / "plain", log=lambda m, s: plain.append(m["loss"]), progress=False)
    cfg = TrainConfig(**{**CFG.__dict__, "deepspeed_stage": 2, "cpu_offload": True})
    train(cfg, tiny_model, PAIRS, tmp_path / "offload", log=lambda m, s: offload.append(m["loss"]), progress=False)
    assert offload == pytest.approx(plain, rel=1e-3)
    trained, reference = load_reward_model(str(tmp_path / "offload"))[0], load_reward_model(str(tmp_path / "plain"))[0]
    for (name, a), b in zip(trained.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)


def test_unusable_pairs_are_counted_skips_and_all_unusable_is_a_clear_error(tiny_model, tmp_path):
    from codepmp.errors import InputError
    from codepmp.train.data import screen_pairs

    tokenizer = PreferenceModel.load(tiny_model, with_lm_head=False).tokenizer
    long_prompt = "word " * 200
    # The cut keeps the prompt and drops the end of the responses: responses that differ only at the end
    # become the same tokens, and a prompt that fills max_length leaves nothing to compare.
    bad = [Pair("Q:", "   ", " no"), Pair("Q:", " common" * 80 + " a", " common" * 80 + " b")]
    kept, skipped = screen_pairs(tokenizer, bad + [Pair(long_prompt, " yes", " no")] + PAIRS[:2], max_length=64)
    assert len(kept) == 2 and all(c.ids != r.ids for c, r in kept)
    assert skipped == {"empty_response": 1, "prompt_too_long": 1, "identical_after_truncation": 1}
    summary = train(CFG, tiny_model, bad + PAIRS, tmp_path / "out", progress=False)
    assert summary["pairs"] == 8 and summary["skipped_empty_response"] == 1
    with pytest.raises(InputError, match="none of the 2 training pairs is usable at max_length 64: empty_response 1, "
                                         "identical_after_truncation 1"):
        train(CFG, tiny_model, bad, tmp_path / "none", progress=False)


def test_deepspeed_config_comes_from_the_repo_files_with_the_run_settings(tmp_path):
    from codepmp.errors import ConfigError
    from codepmp.train.loop import deepspeed_config

    zero2 = deepspeed_config(TrainConfig(deepspeed_stage=2, batch_size=8, bf16=True), grad_accum=16)
    assert zero2["zero_optimization"]["stage"] == 2 and zero2["zero_optimization"]["overlap_comm"] is True
    assert (zero2["train_micro_batch_size_per_gpu"], zero2["gradient_accumulation_steps"]) == (8, 16)
    assert zero2["bf16"] == {"enabled": True} and "offload_optimizer" not in zero2["zero_optimization"]
    zero3 = deepspeed_config(TrainConfig(deepspeed_stage=3, cpu_offload=True), grad_accum=1)["zero_optimization"]
    assert zero3["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero3["offload_optimizer"]["device"] == zero3["offload_param"]["device"] == "cpu"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="deepspeed_config '.*bad.json' cannot be read as JSON"):
        deepspeed_config(TrainConfig(deepspeed_stage=2, deepspeed_config=str(tmp_path / "bad.json")), 1)


def test_compiled_decoder_layers_train_like_eager_ones(tiny_model, tmp_path):
    eager, compiled = [], []
    cfg = TrainConfig(**{**CFG.__dict__, "grad_accum": 1, "batch_size": 4})  # 2 steps of 4 pairs
    train(cfg, tiny_model, PAIRS, tmp_path / "eager", log=lambda m, s: eager.append(m["loss"]), progress=False)
    cfg = TrainConfig(**{**cfg.__dict__, "compile": True})
    train(cfg, tiny_model, PAIRS, tmp_path / "compiled", log=lambda m, s: compiled.append(m["loss"]), progress=False)
    assert compiled == pytest.approx(eager, rel=1e-4)
