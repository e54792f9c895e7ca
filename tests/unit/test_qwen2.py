"""The Qwen2 architecture (the `qwen` and `paper` profiles' reward models) through pretrain, finetune and scoring,
on a tiny random Qwen2 built from a config: tied embeddings, no BOS, a pad token that is not eos."""

import pytest
import torch
from transformers import Qwen2ForSequenceClassification

from codepmp.config import TrainConfig
from codepmp.evaluate.run import Scorer
from codepmp.models import load_reward_model
from codepmp.testing import QWEN_EOS, write_tiny_model
from codepmp.encoding import encode
from codepmp.pairs import Pair
from codepmp.train.data import collate, encode_pairs
from codepmp.train.loop import train
from codepmp.train.model import PreferenceModel

PAIRS = [Pair(f"Instruction:What is {i} plus {i}?\n\nResponse:", f" {i} plus {i} is {2 * i}. #### {2 * i}",
              f" {i} plus {i} is {2 * i + 1}. #### {2 * i + 1}") for i in range(8)]
PRETRAIN = TrainConfig(max_length=64, batch_size=2, grad_accum=2, lr=1e-3, warmup_frac=0.25, decay_frac=0.25,
                       log_every=1, seed=0)
FINETUNE = TrainConfig(**{**PRETRAIN.__dict__, "lm_coef": 0.0})
# Recorded from this exact setup (tiny Qwen2, seed 0): a change means the loss, data order or the model changed.
GOLDEN_PRETRAIN_LOSS = 6.54568


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return str(write_tiny_model(tmp_path_factory.mktemp("qwen") / "model", reward=False, seed=0, arch="qwen2"))


def test_tokenizer_adds_no_bos_and_pads_with_the_end_of_turn_token(tiny_qwen):
    model = PreferenceModel.load(tiny_qwen, with_lm_head=True)
    tokenizer = model.tokenizer
    assert tokenizer.bos_token is None
    encoded = encode(tokenizer, PAIRS[0].prompt, PAIRS[0].chosen, 64)
    assert encoded.ids == tokenizer(PAIRS[0].prompt + PAIRS[0].chosen, add_special_tokens=False)["input_ids"]
    assert tokenizer.pad_token == QWEN_EOS and model.reward_model.config.pad_token_id == tokenizer.eos_token_id
    # Tied embeddings: the LM loss of pretraining reads the input embedding, no separate head is loaded.
    assert model.reward_model.config.tie_word_embeddings and model.lm_head is None


def test_reward_is_read_at_the_last_token_as_qwen2_sequence_classifier_reads_it(tiny_qwen):
    model = PreferenceModel.load(tiny_qwen, with_lm_head=True).eval()
    assert isinstance(model.reward_model, Qwen2ForSequenceClassification)
    pairs = [PAIRS[0], Pair("Q:", " a much longer answer " * 3, " no")]
    batch = collate(encode_pairs(model.tokenizer, pairs, 64), model.reward_model.config.pad_token_id)
    assert (batch["attention_mask"] == 0).any()  # padded rows, so the readout must skip the padding
    with torch.no_grad():
        ours, _, _ = model(batch["input_ids"], batch["attention_mask"], lm_labels=batch["labels"])
        theirs = model.reward_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        alone = [model.reward_model(input_ids=torch.tensor([row[mask.bool()].tolist()])).logits.item()
                 for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    torch.testing.assert_close(ours, theirs.squeeze(-1).float())
    assert ours.tolist() == pytest.approx(alone, abs=1e-5)


def test_pretrain_then_finetune_then_score_a_qwen2_reward_model(tiny_qwen, tmp_path):
    history = []
    pretrained = train(PRETRAIN, tiny_qwen, PAIRS, tmp_path / "pmp", log=lambda m, s: history.append(m),
                       progress=False)
    assert pretrained["steps"] == 2 and history[0]["lm_loss"] > 0
    assert pretrained["final_loss"] == pytest.approx(GOLDEN_PRETRAIN_LOSS, abs=1e-4)
    reloaded, _ = load_reward_model(str(tmp_path / "pmp"))
    assert isinstance(reloaded, Qwen2ForSequenceClassification)
    finetuned = train(FINETUNE, str(tmp_path / "pmp"), PAIRS, tmp_path / "rm", log=lambda m, s: None,
                      progress=False)
    assert finetuned["steps"] == 2
    texts = [(p.prompt, p.chosen) for p in PAIRS[:3]] + [(p.prompt, p.rejected) for p in PAIRS[:3]]
    shared = Scorer(str(tmp_path / "rm"), batch_size=2, max_length=64)
    alone = Scorer(str(tmp_path / "rm"), batch_size=1, max_length=64, share=False)
    scores = shared(texts)
    assert scores == pytest.approx(alone(texts), abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) == len(texts)  # the head reads each text, not a constant


def test_a_random_model_takes_the_shape_and_tokenizer_of_a_config_folder(tiny_qwen, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codepmp.testing import write_random_model

    out = write_random_model(tiny_qwen, tmp_path / "random", dtype=torch.bfloat16, seed=1)
    source, model = AutoModelForCausalLM.from_pretrained(tiny_qwen), AutoModelForCausalLM.from_pretrained(out)
    assert model.config.to_diff_dict() | {"dtype": None} == source.config.to_diff_dict() | {"dtype": None}
    assert next(model.parameters()).dtype == torch.bfloat16
    weight = model.get_input_embeddings().weight.float()
    assert weight.shape == source.get_input_embeddings().weight.shape
    assert not torch.allclose(weight, source.get_input_embeddings().weight.float())  # new weights, not a copy
    assert AutoTokenizer.from_pretrained(out)("def f") == AutoTokenizer.from_pretrained(tiny_qwen)("def f")
