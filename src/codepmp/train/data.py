"""Preference pairs -> token ids -> length-grouped, right-padded batches (chosen rows first, then rejected)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class Pair:
    prompt: str
    chosen: str
    rejected: str


@dataclass
class Encoded:
    ids: list[int]
    response_start: int
    """Index of the first response token; earlier tokens are prompt and get no LM loss."""


def encode(tokenizer, prompt: str, response: str, max_length: int) -> Encoded:
    """Tokenize prompt+response as one text (as inference does) and locate the response boundary by offsets."""
    enc = tokenizer(prompt + response, return_offsets_mapping=True, truncation=True, max_length=max_length)
    start = next((i for i, (lo, hi) in enumerate(enc["offset_mapping"]) if hi > lo and lo >= len(prompt)),
                 len(enc["input_ids"]))
    return Encoded(list(enc["input_ids"]), start)


def encode_pairs(tokenizer, pairs: list[Pair], max_length: int) -> list[tuple[Encoded, Encoded]]:
    return [(encode(tokenizer, p.prompt, p.chosen, max_length), encode(tokenizer, p.prompt, p.rejected, max_length))
            for p in pairs]


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of similar length (little padding), in a seeded random order so training sees a mix."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    random.Random(seed).shuffle(batches)
    return batches


def pad_right(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, L] input ids padded on the right, and the attention mask."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(sequences):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
    return input_ids, attention_mask


def collate(encoded: list[tuple[Encoded, Encoded]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """[2B, L] tensors: rows 0..B-1 chosen, B..2B-1 rejected; labels mark chosen response tokens only."""
    rows = [c for c, _ in encoded] + [r for _, r in encoded]
    input_ids, attention_mask = pad_right([r.ids for r in rows], pad_token_id)
    labels = torch.full((len(encoded), input_ids.size(1)), -100, dtype=torch.long)
    for i, (chosen, _) in enumerate(encoded):
        labels[i, chosen.response_start:len(chosen.ids)] = input_ids[i, chosen.response_start:len(chosen.ids)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
