"""The preference model: a 1-label sequence-classification reward head and the base LM head on one backbone.

The saved folder is a plain transformers sequence-classification model (what finetuning, evaluation and
MLflow load); an untied LM head is kept beside it in `lm_head.safetensors` so PMP can resume with it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from codepmp.models import load_reward_model, resolve
from codepmp.train.losses import last_token_index, next_token_targets

LM_HEAD_FILE = "lm_head.safetensors"


def _untied_lm_head(path: str) -> torch.Tensor:
    """The base model's output embedding, read from its safetensors without building a second model."""
    from safetensors import safe_open

    own = Path(path) / LM_HEAD_FILE
    files = [own] if own.exists() else sorted(Path(path).glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.endswith("lm_head.weight"):
                    return f.get_tensor(key)
    raise FileNotFoundError(f"no lm_head.weight in {path}")


class PreferenceModel(nn.Module):
    def __init__(self, reward_model, tokenizer, lm_head_weight: torch.Tensor | None):
        super().__init__()
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.lm_head = nn.Parameter(lm_head_weight) if lm_head_weight is not None else None

    @classmethod
    def load(cls, spec: str, with_lm_head: bool, dtype=None, attn_implementation: str = "") -> "PreferenceModel":
        path = resolve(spec)
        reward_model, tokenizer = load_reward_model(path, dtype=dtype, attn_implementation=attn_implementation)
        weight = None
        if with_lm_head and not reward_model.config.tie_word_embeddings:
            weight = _untied_lm_head(path).to(reward_model.dtype)
        return cls(reward_model, tokenizer, weight)

    @property
    def backbone(self):
        return getattr(self.reward_model, self.reward_model.base_model_prefix)

    def lm_weight(self) -> torch.Tensor:
        return self.lm_head if self.lm_head is not None else self.backbone.get_input_embeddings().weight

    def forward(self, input_ids, attention_mask=None, lm_labels=None, position_ids=None, last=None, tree_mask=None):
        """Rewards for every padded row; with `position_ids` and `last` (a packed batch, see
        `data.collate_packed`) for every sequence packed in row 0; with `tree_mask` too (pair trees, see
        `data.collate_pair_trees`) for every sequence at its (row, index) in `last`. With `lm_labels` (for the
        first rows: the chosen half) also the LM logits and targets at the positions that predict a labelled
        response token."""
        if tree_mask is not None:
            # transformers passes a 4D mask to the attention kernel as is; an additive one suits sdpa and eager.
            dtype = self.backbone.get_input_embeddings().weight.dtype
            attention_mask = torch.zeros(tree_mask.shape, dtype=dtype, device=tree_mask.device).masked_fill_(
                ~tree_mask, torch.finfo(dtype).min)[:, None]
        # No KV cache: transformers only derives the packed block-diagonal mask from position ids without one.
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state
        if last is None:
            last = last_token_index(input_ids, self.reward_model.config.pad_token_id)
            pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        elif last.dim() == 2:
            pooled = hidden[last[:, 0], last[:, 1]]
        else:
            pooled = hidden[0, last]
        rewards = self.reward_model.score(pooled).squeeze(-1).float()
        if lm_labels is None:
            return rewards, None, None
        keep, targets = next_token_targets(lm_labels)
        # Only those positions go through the LM head: over a whole batch, logits for a 50k-150k vocabulary
        # take more memory than the backbone's activations, and prompt positions would be thrown away.
        logits = F.linear(hidden[: lm_labels.size(0), :-1][keep], self.lm_weight())
        return rewards, logits, targets

    def save(self, out_dir: str | Path) -> None:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        self.reward_model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        if self.lm_head is not None:
            save_file({"lm_head.weight": self.lm_head.detach().contiguous().cpu()}, str(out_dir / LM_HEAD_FILE))
