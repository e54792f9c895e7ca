"""Training on a tiny random Llama: golden loss, reward readout parity with transformers, DeepSpeed ZeRO-2."""

import pytest
import torch

from codepmp.config import TrainConfig
from codepmp.models import load_reward_model
from codepmp.testing import write_tiny_model
from codepmp.encoding import encode
from codepmp.pairs import Pair
from codepmp.train.data import collate, collate_packed, collate_pair_trees, encode_pairs, length_grouped_batches
from codepmp.train.loop import train
from codepmp.train.model import PreferenceModel

PAIRS = [Pair(f"### Instruction: task {i}\n\n### Response:", f"\ndef f{i}(x):\n    return x + {i}\n",
              f"\nf{i} = None") for i in range(8)]
CFG = TrainConfig(max_length=64, batch_size=2, grad_accum=2, lr=1e-3, warmup_frac=0.25, decay_frac=0.25,
                  log_every=1, seed=0)
# Recorded from this exact setup; a change here means the loss, schedule, data order or model changed.
GOLDEN_FINAL_LOSS = 6.44096


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", reward=False, seed=0))


def test_encode_marks_response_boundary(tiny_model):
    _, tokenizer = load_reward_model(tiny_model)
    enc = encode(tokenizer, "prompt:", " response text", max_length=64)
    decoded = tokenizer.decode(enc.ids[enc.response_start:])
    assert decoded.strip() == "response text"
    assert len(encode(tokenizer, "p", "x " * 500, max_length=16).ids) == 16


def test_truncation_keeps_the_prompt_and_cuts_the_end_of_the_response(tiny_model):
    from codepmp.encoding import PromptTooLong

    _, tokenizer = load_reward_model(tiny_model)
    question = "Tom has 3 apples and buys 4 more. How many apples?"
    answer = " He has 3 + 4 = 7 apples. " + "Checking again. " * 40 + "#### 7"
    full = encode(tokenizer, question, answer, 512)
    limit = full.response_start + 8
    cut = encode(tokenizer, question, answer, limit)
    assert len(full.ids) > limit and len(cut.ids) == limit
    assert cut.ids == full.ids[:limit] and cut.response_start == full.response_start
    assert tokenizer.decode(cut.ids[:cut.response_start]) == question  # the whole question is scored
    assert not tokenizer.decode(cut.ids).endswith("#### 7")  # the response's end went
    # A prompt with no room left for a response token is an error naming its length; one token of room is enough.
    prompt_tokens = full.response_start
    with pytest.raises(PromptTooLong, match=f"a prompt of {prompt_tokens} tokens leaves no room .* max_length "
                                            f"{prompt_tokens}"):
        encode(tokenizer, question, answer, max_length=prompt_tokens)
    fits = encode(tokenizer, question, answer, max_length=prompt_tokens + 1)
    assert fits.response_start == prompt_tokens and len(fits.ids) == prompt_tokens + 1


def test_batches_cover_every_pair_once():
    batches = length_grouped_batches([5, 1, 9, 3, 7], batch_size=2, seed=1)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert all(len(b) <= 2 for b in batches)


def test_reward_readout_matches_transformers_head(tiny_model):
    model = PreferenceModel.load(tiny_model, with_lm_head=True).eval()
    encoded = encode_pairs(model.tokenizer, PAIRS[:3], 64)
    batch = collate(encoded, model.reward_model.config.pad_token_id)
    with torch.no_grad():
        ours, logits, targets = model(batch["input_ids"], batch["attention_mask"], lm_labels=batch["labels"])
        theirs = model.reward_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, theirs.squeeze(-1).float())
    labelled = int((batch["labels"] != -100).sum())
    # A prompt precedes every response, so each labelled token has a position that predicts it.
    assert labelled > 0 and logits.shape[0] == targets.shape[0] == labelled
    assert targets.tolist() == batch["labels"][batch["labels"] != -100].tolist()


def test_packed_batch_gives_the_rewards_and_lm_targets_of_the_padded_batch(tiny_model):
    model = PreferenceModel.load(tiny_model, with_lm_head=True).eval()
    # Unequal lengths, so the padded batch has padding and the packed row has sequence boundaries.
    pairs = [PAIRS[0], Pair("Q:", " a much longer answer " * 4, " no"), PAIRS[5]]
    encoded = encode_pairs(model.tokenizer, pairs, 64)
    padded = collate(encoded, model.reward_model.config.pad_token_id)
    packed = collate_packed(encoded)
    assert packed["input_ids"].shape == (1, int(padded["attention_mask"].sum()))
    with torch.no_grad():
        rewards, logits, targets = model(padded["input_ids"], padded["attention_mask"], lm_labels=padded["labels"])
        packed_rewards, packed_logits, packed_targets = model(
            packed["input_ids"], lm_labels=packed["labels"], position_ids=packed["position_ids"],
            last=packed["last"])
    torch.testing.assert_close(packed_rewards, rewards, rtol=1e-4, atol=1e-5)
    assert packed_targets.tolist() == targets.tolist()
    torch.testing.assert_close(packed_logits, logits, rtol=1e-4, atol=1e-4)
    # Position ids restart per sequence; without them the packed row is one long causal sequence.
    with torch.no_grad():
        leaky, _, _ = model(packed["input_ids"], lm_labels=None, last=packed["last"],
                            position_ids=torch.arange(packed["input_ids"].size(1))[None])
    assert not torch.allclose(leaky[1:], rewards[1:], atol=1e-3)


def test_packed_training_follows_padded_training(tiny_model, tmp_path):
    padded, packed = [], []
    train(CFG, tiny_model, PAIRS, tmp_path / "padded", log=lambda m, s: padded.append(m), progress=False)
    cfg = TrainConfig(**{**CFG.__dict__, "packing": True, "shared_prefix": False})
    train(cfg, tiny_model, PAIRS, tmp_path / "packed", log=lambda m, s: packed.append(m), progress=False)
    assert [m["loss"] for m in packed] == pytest.approx([m["loss"] for m in padded], rel=1e-4)
    # Throughput counts real tokens only, so the two layouts report the same work.
    assert packed[-1]["tokens_per_s"] / packed[-1]["samples_per_s"] == pytest.approx(
        padded[-1]["tokens_per_s"] / padded[-1]["samples_per_s"])


# Pairs whose two sides share the prompt and more (a corrupted copy), end inside each other, or share nothing.
TREE_PAIRS = [PAIRS[0], Pair("Q: 3 + 4?", " 3 + 4 = 7. The answer is 7", " 3 + 4 = 7. The answer is 8"),
              Pair("Q:", " a much longer answer " * 4, " a much"), Pair("Q:", " short", " short and then more"),
              Pair("", "abc", "xyz")]


def _padded_and_tree_batches(model, pairs):
    encoded = encode_pairs(model.tokenizer, pairs, 64)
    return encoded, collate(encoded, model.reward_model.config.pad_token_id), collate_pair_trees(
        encoded, model.reward_model.config.pad_token_id)


def test_pair_trees_give_the_rewards_lm_targets_and_gradients_of_the_padded_batch(tiny_model):
    model = PreferenceModel.load(tiny_model, with_lm_head=True).eval()
    encoded, padded, trees = _padded_and_tree_batches(model, TREE_PAIRS)
    # Each shared token runs once: a row per pair, as long as the chosen side plus the rejected side's own part.
    shared = [next((i for i, (a, b) in enumerate(zip(c.ids, r.ids)) if a != b), min(len(c.ids), len(r.ids)))
              for c, r in encoded]
    assert trees["input_ids"].shape == (len(TREE_PAIRS), max(len(c.ids) + len(r.ids) - k
                                                             for (c, r), k in zip(encoded, shared)))
    results = []
    for batch in (padded, trees):
        model.zero_grad()
        rewards, logits, targets = model(batch["input_ids"], batch.get("attention_mask"), lm_labels=batch["labels"],
                                         position_ids=batch.get("position_ids"), last=batch.get("last"),
                                         tree_mask=batch.get("tree_mask"))
        n = len(TREE_PAIRS)
        (-torch.nn.functional.logsigmoid(rewards[:n] - rewards[n:]).mean()
         + torch.nn.functional.cross_entropy(logits, targets)).backward()
        results.append((rewards.detach(), logits.detach(), targets,
                        {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
    (rewards, logits, targets, grads), (tree_rewards, tree_logits, tree_targets, tree_grads) = results
    torch.testing.assert_close(tree_rewards, rewards, rtol=1e-4, atol=1e-5)
    assert tree_targets.tolist() == targets.tolist()
    torch.testing.assert_close(tree_logits, logits, rtol=1e-4, atol=1e-4)
    assert grads.keys() == tree_grads.keys() and len(grads) > 2
    for name in grads:
        torch.testing.assert_close(tree_grads[name], grads[name], rtol=1e-3, atol=1e-6, msg=name)
    # Without the tree mask the rejected branch would see the chosen one and read other rewards.
    with torch.no_grad():
        leaky, _, _ = model(trees["input_ids"], position_ids=trees["position_ids"], last=trees["last"])
    assert not torch.allclose(leaky[len(TREE_PAIRS):], rewards[len(TREE_PAIRS):], atol=1e-3)


def test_pair_tree_rows_hold_each_shared_token_once(tiny_model):
    _, tokenizer = load_reward_model(tiny_model)
    chosen, rejected = encode_pairs(tokenizer, [TREE_PAIRS[1]], 64)[0]
    trees = collate_pair_trees([(chosen, rejected)], 0)
    split = next(i for i, (a, b) in enumerate(zip(chosen.ids, rejected.ids)) if a != b)
    assert split > chosen.response_start  # the corrupted copy shares part of its response
    assert trees["input_ids"][0].tolist() == chosen.ids + rejected.ids[split:]
    assert trees["position_ids"][0].tolist() == list(range(len(chosen.ids))) + list(range(split, len(rejected.ids)))
    branch = len(chosen.ids)
    mask = trees["tree_mask"][0]
    assert mask[branch, :split].all() and not mask[branch, split:branch].any() and mask[branch, branch]
    assert trees["last"].tolist() == [[0, len(chosen.ids) - 1], [0, trees["input_ids"].size(1) - 1]]


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


def test_pair_files_with_wrong_columns_types_or_nulls_are_clear_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from codepmp.errors import InputError
    from codepmp.synthesize.run import read_pairs

    def write(rows, schema=None):
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "pairs.parquet")

    with pytest.raises(InputError, match="no pairs.parquet in .*run the synthesize stage first"):
        read_pairs(tmp_path)
    write([{"description": "d", "chosen": "c", "reject": "r"}])
    with pytest.raises(InputError, match="has no column 'rejected' \\(columns: description, chosen, reject\\)"):
        read_pairs(tmp_path)
    write([{"description": "d", "chosen": 1, "rejected": "r"}])
    with pytest.raises(InputError, match="column 'chosen' must hold strings, not int64"):
        read_pairs(tmp_path)
    write([{"description": "d", "chosen": "c", "rejected": "r"}, {"description": "d", "chosen": None, "rejected": "r"}],
          pa.schema([("description", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())]))
    with pytest.raises(InputError, match="row 1 has a null in \\['chosen'\\]"):
        read_pairs(tmp_path)
    (tmp_path / "pairs.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="is not a readable Parquet file"):
        read_pairs(tmp_path)


TWO_RANK_SCRIPT = """
import json, sys
from codepmp.config import TrainConfig
from codepmp.pairs import Pair
from codepmp.train.loop import train

model, out, stage = sys.argv[1], sys.argv[2], int(sys.argv[3])
pairs = [Pair(f"### Instruction: task {i}\\n\\n### Response:", f"\\ndef f{i}(x):\\n    return x + {i}\\n",
              f"\\nf{i} = None") for i in range(8)]
cfg = TrainConfig(max_length=64, batch_size=2, grad_accum=1, lr=1e-3, warmup_frac=0.25, decay_frac=0.25,
                  log_every=1, seed=0, deepspeed_stage=stage)
losses = []
summary = train(cfg, model, pairs, out, log=lambda m, s: losses.append(m["loss"]), progress=False)
if losses:
    print("LOSSES " + json.dumps({"losses": losses, "summary": summary}), flush=True)
"""


def test_two_process_zero2_run_on_cpu_matches_one_process(tiny_model, tmp_path, stage=2):
    """2 processes (torchrun, gloo) x 1 micro-batch of 2 pairs per step = 1 process x 2 micro-batches."""
    import json
    import os
    import socket
    import subprocess
    import sys

    one = []
    cfg = TrainConfig(**{**CFG.__dict__, "deepspeed_stage": stage})
    train(cfg, tiny_model, PAIRS, tmp_path / "one", log=lambda m, s: one.append(m["loss"]), progress=False)

    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANK_SCRIPT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), str(script), tiny_model,
                           str(tmp_path / "two"), str(stage)],
                          capture_output=True, text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("LOSSES ")]
    assert proc.returncode == 0 and len(lines) == 1, proc.stderr[-3000:]  # only rank 0 logs
    result = json.loads(lines[0].removeprefix("LOSSES "))
    assert result["summary"]["processes"] == 2 and result["summary"]["steps"] == 2
    assert result["losses"] == pytest.approx(one, rel=1e-3)
    two, single = load_reward_model(str(tmp_path / "two"))[0], load_reward_model(str(tmp_path / "one"))[0]
    for (name, a), b in zip(two.state_dict().items(), single.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)


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


def test_bad_input_in_a_launched_process_is_the_stage_error(tiny_model, tmp_path):
    from codepmp.errors import InputError
    from codepmp.train.launch import launch

    cfg = TrainConfig(**{**CFG.__dict__, "deepspeed_stage": 2, "processes": 2})
    blank = [Pair(p.prompt, " ", p.rejected) for p in PAIRS]
    with pytest.raises(InputError, match="none of the 8 training pairs is usable at max_length 64: empty_response 8"):
        launch(cfg, tiny_model, blank, tmp_path / "out", checkpoints=None)
    assert not (tmp_path / "out").exists()


def test_compiled_decoder_layers_train_like_eager_ones(tiny_model, tmp_path):
    eager, compiled = [], []
    cfg = TrainConfig(**{**CFG.__dict__, "grad_accum": 1, "batch_size": 4})  # 2 steps of 4 pairs
    train(cfg, tiny_model, PAIRS, tmp_path / "eager", log=lambda m, s: eager.append(m["loss"]), progress=False)
    cfg = TrainConfig(**{**cfg.__dict__, "compile": True})
    train(cfg, tiny_model, PAIRS, tmp_path / "compiled", log=lambda m, s: compiled.append(m["loss"]), progress=False)
    assert compiled == pytest.approx(eager, rel=1e-4)
