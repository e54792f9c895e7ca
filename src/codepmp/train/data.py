"""Preference pairs -> token ids -> length-grouped batches (chosen rows first, then rejected): right-padded to
[2B, L], packed into one [1, sum of lengths] row with no padding at all, or one tree per pair, [B, L'], in which
the tokens both sides share run once."""

from __future__ import annotations

import random

import torch

from codepmp.encoding import Encoded, PromptTooLong, encode, pad_right, shared_prefix_length
from codepmp.pairs import Pair


def encode_pairs(tokenizer, pairs: list[Pair], max_length: int) -> list[tuple[Encoded, Encoded]]:
    return [(encode(tokenizer, p.prompt, p.chosen, max_length), encode(tokenizer, p.prompt, p.rejected, max_length))
            for p in pairs]


SKIP_REASONS = ("empty_response", "prompt_too_long", "identical_after_truncation")


def screen_pairs(tokenizer, pairs: list[Pair], max_length: int) -> tuple[list[tuple[Encoded, Encoded]], dict]:
    """The encoded pairs that can teach a preference, and the others counted by reason: a blank side, a prompt
    that fills `max_length` by itself (see `encode`), or two sides that are the same tokens once cut to
    `max_length` (responses that differ only after the cut; the loss would compare a sequence with itself)."""
    kept, skipped = [], dict.fromkeys(SKIP_REASONS, 0)
    for pair in pairs:
        if not pair.chosen.strip() or not pair.rejected.strip():
            skipped["empty_response"] += 1
            continue
        try:
            chosen, rejected = encode_pairs(tokenizer, [pair], max_length)[0]
        except PromptTooLong:
            skipped["prompt_too_long"] += 1
            continue
        if chosen.ids == rejected.ids:
            skipped["identical_after_truncation"] += 1
        else:
            kept.append((chosen, rejected))
    return kept, skipped


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of similar length (little padding), in a seeded random order so training sees a mix."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    random.Random(seed).shuffle(batches)
    return batches


def collate(encoded: list[tuple[Encoded, Encoded]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """[2B, L] tensors: rows 0..B-1 chosen, B..2B-1 rejected; labels mark chosen response tokens only."""
    rows = [c for c, _ in encoded] + [r for _, r in encoded]
    input_ids, attention_mask = pad_right([r.ids for r in rows], pad_token_id)
    labels = torch.full((len(encoded), input_ids.size(1)), -100, dtype=torch.long)
    for i, (chosen, _) in enumerate(encoded):
        labels[i, chosen.response_start:len(chosen.ids)] = input_ids[i, chosen.response_start:len(chosen.ids)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_packed(encoded: list[tuple[Encoded, Encoded]]) -> dict[str, torch.Tensor]:
    """One row holding every sequence of the batch back to back (chosen ones first), with position ids that
    restart at 0 for each sequence: transformers turns those into a block-diagonal causal mask (flash
    attention: variable-length kernels), so no token attends across sequences and no compute goes to padding.

    `last` is the index of each sequence's final token (where its reward is read); `labels` marks the chosen
    response tokens, except a sequence's first token, which nothing in that sequence predicts."""
    rows = [c for c, _ in encoded] + [r for _, r in encoded]
    input_ids = torch.tensor([[t for row in rows for t in row.ids]], dtype=torch.long)
    position_ids = torch.tensor([[p for row in rows for p in range(len(row.ids))]], dtype=torch.long)
    ends = torch.tensor([len(row.ids) for row in rows]).cumsum(0)
    labels = torch.full_like(input_ids, -100)
    for start, (chosen, _) in zip(ends[: len(encoded)] - torch.tensor([len(c.ids) for c, _ in encoded]), encoded):
        lo, hi = int(start) + max(chosen.response_start, 1), int(start) + len(chosen.ids)
        labels[0, lo:hi] = input_ids[0, lo:hi]
    return {"input_ids": input_ids, "position_ids": position_ids, "last": ends - 1, "labels": labels}


def collate_pair_trees(encoded: list[tuple[Encoded, Encoded]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One right-padded row per pair: the chosen sequence, then the rejected tokens after the prefix the two
    share (the prompt, and for a corrupted copy most of the response). `tree_mask` [B, L, L] lets every token
    see its own ancestors only (a rejected token: the shared prefix and its own branch; padding: itself) and
    `position_ids` give each token its position in its own sequence, so every reward and LM logit is the one
    the padded batch gives (up to float rounding) while the shared tokens run, and take gradients, once.

    `last` holds (row, index) of each sequence's final token, chosen ones first; `labels` marks the chosen
    response tokens, as `collate` does (the chosen sequence starts each row)."""
    rows, branches = [], []
    for chosen, rejected in encoded:
        shared = shared_prefix_length(chosen.ids, rejected.ids)
        rows.append(chosen.ids + rejected.ids[shared:])
        branches.append(shared)
    width, size = max(map(len, rows)), len(encoded)
    input_ids = torch.full((size, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros_like(input_ids)
    tree_mask = torch.eye(width, dtype=torch.bool).repeat(size, 1, 1)
    labels = torch.full_like(input_ids, -100)
    last = torch.zeros((2 * size, 2), dtype=torch.long)
    for b, ((chosen, rejected), shared, row) in enumerate(zip(encoded, branches, rows)):
        n_chosen, n_branch = len(chosen.ids), len(rejected.ids) - shared
        input_ids[b, :len(row)] = torch.tensor(row)
        position_ids[b, :n_chosen] = torch.arange(n_chosen)
        position_ids[b, n_chosen:len(row)] = torch.arange(shared, len(rejected.ids))
        tree_mask[b, :n_chosen, :n_chosen] = torch.ones(n_chosen, n_chosen, dtype=torch.bool).tril()
        tree_mask[b, n_chosen:len(row), :shared] = True
        tree_mask[b, n_chosen:len(row), n_chosen:len(row)] = torch.ones(n_branch, n_branch, dtype=torch.bool).tril()
        labels[b, chosen.response_start:n_chosen] = input_ids[b, chosen.response_start:n_chosen]
        # A rejected side that is a prefix of the chosen one ends inside it.
        last[b], last[size + b] = torch.tensor([b, n_chosen - 1]), torch.tensor(
            [b, len(row) - 1 if n_branch else len(rejected.ids) - 1])
    return {"input_ids": input_ids, "position_ids": position_ids, "tree_mask": tree_mask, "labels": labels,
            "last": last}
