"""The preference model's reward readout against transformers' own sequence-classification head."""

import torch

from codepmp.train.data import collate, encode_pairs
from codepmp.train.model import PreferenceModel
from tests.unit.train.helpers import PAIRS


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
