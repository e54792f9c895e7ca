"""CodePMP objective: pairwise ranking loss plus LM loss on the chosen response tokens.

    loss = rm_coef * -log sigmoid(r_chosen - r_rejected) + lm_coef * CE(lm_head(h), chosen response tokens)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood that the chosen response outranks the rejected one."""
    return -F.logsigmoid(chosen - rejected).mean()


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; `labels` is -100 everywhere except the chosen response tokens."""
    shifted_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    shifted_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=-100)


def last_token_index(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Index of the last non-pad token per row: where transformers' sequence classifiers read the score."""
    positions = torch.arange(input_ids.size(1), device=input_ids.device)
    return ((input_ids != pad_token_id).int() * positions).argmax(-1)


def pmp_loss(chosen_reward, rejected_reward, logits, labels, rm_coef: float, lm_coef: float):
    """Return (total, parts) where parts holds detached floats for logging."""
    rm = pairwise_loss(chosen_reward, rejected_reward)
    total = rm_coef * rm
    parts = {"rm_loss": rm.item(), "accuracy": (chosen_reward > rejected_reward).float().mean().item(),
             "margin": (chosen_reward - rejected_reward).mean().item()}
    if lm_coef:
        lm = lm_loss(logits, labels)
        total = total + lm_coef * lm
        parts["lm_loss"] = lm.item()
    parts["loss"] = total.item()
    return total, parts
