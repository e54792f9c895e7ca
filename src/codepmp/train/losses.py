"""CodePMP objective: pairwise ranking loss plus LM loss on the chosen response tokens.

    loss = rm_coef * -log sigmoid(r_chosen - r_rejected) + lm_coef * CE(lm_head(h), chosen response tokens)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood that the chosen response outranks the rejected one."""
    return -F.logsigmoid(chosen - rejected).mean()


def next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For labels that are -100 except on chosen response tokens: a [B, T-1] mask of the positions whose
    next token is labelled, and those next tokens (position t predicts token t+1)."""
    targets = labels[:, 1:]
    keep = targets != -100
    return keep, targets[keep]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of [K, V] logits, taken only at the positions `next_token_targets` kept."""
    return F.cross_entropy(logits.float(), targets)


def last_token_index(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Index of the last non-pad token per row: where transformers' sequence classifiers read the score."""
    positions = torch.arange(input_ids.size(1), device=input_ids.device)
    return ((input_ids != pad_token_id).int() * positions).argmax(-1)


def pmp_loss(chosen_reward, rejected_reward, lm_logits, lm_targets, rm_coef: float, lm_coef: float):
    """Return (total, parts) where parts holds detached floats for logging."""
    rm = pairwise_loss(chosen_reward, rejected_reward)
    total = rm_coef * rm
    parts = {"rm_loss": rm.item(), "accuracy": (chosen_reward > rejected_reward).float().mean().item(),
             "margin": (chosen_reward - rejected_reward).mean().item()}
    if lm_coef:
        lm = lm_loss(lm_logits, lm_targets)
        total = total + lm_coef * lm
        parts["lm_loss"] = lm.item()
    parts["loss"] = total.item()
    return total, parts
