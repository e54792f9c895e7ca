"""A prompt and a response as token ids for a reward model, shared by the trainer and the scorer: one text
tokenized as inference sees it, the response boundary located by offsets, rows padded on the right."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codepmp.errors import InputError


@dataclass
class Encoded:
    ids: list[int]
    response_start: int
    """Index of the first response token; earlier tokens are prompt and get no LM loss."""


class PromptTooLong(InputError):
    """A prompt that leaves no room for one response token within `max_length`."""


def encode(tokenizer, prompt: str, response: str, max_length: int) -> Encoded:
    """Tokenize prompt+response as one text (as inference does) and locate the response boundary by offsets.

    Too long a text keeps its whole prompt and loses the end of its response (trailing special tokens such as
    an EOS are kept): a candidate scored without its question would be judged on nothing it was asked. The
    reward is read at the last token, so a cut response is judged on its first part only: a long MATH solution
    loses its final answer, and two responses that differ only after the cut become the same tokens
    (`screen_pairs` drops such pairs; raise `max_length` where answers are long). A prompt that leaves no room
    for a response token raises PromptTooLong, naming its length: training skips and counts those pairs
    (`screen_pairs`); a scorer cannot rank what it cannot see, so it reports the error."""
    enc = tokenizer(prompt + response, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    start = next((i for i, (lo, hi) in enumerate(offsets) if hi > lo and lo >= len(prompt)), len(ids))
    if len(ids) > max_length:
        tail = next((n for n, (lo, hi) in enumerate(reversed(offsets)) if hi > lo), 0)
        keep = max_length - tail
        if start >= keep:
            raise PromptTooLong(f"a prompt of {start} tokens leaves no room for its response within max_length "
                                f"{max_length} (prompt starts {prompt[:60]!r})")
        ids = ids[:keep] + ids[len(ids) - tail:]
    return Encoded(ids, start)


def pad_right(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, L] input ids padded on the right, and the attention mask."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(sequences):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
    return input_ids, attention_mask


def shared_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
