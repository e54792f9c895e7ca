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


def collate(encoded: list[tuple[Encoded, Encoded]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """[2B, L] tensors: rows 0..B-1 chosen, B..2B-1 rejected; labels mark chosen response tokens only."""
    rows = [c for c, _ in encoded] + [r for _, r in encoded]
    width = max(len(r.ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, row in enumerate(rows):
        n = len(row.ids)
        input_ids[i, :n] = torch.tensor(row.ids)
        attention_mask[i, :n] = 1
        if i < len(encoded):
            labels[i, row.response_start:n] = input_ids[i, row.response_start:n]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels[: len(encoded)]}
