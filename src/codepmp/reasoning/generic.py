"""Preference pairs from any source, as JSON lines of {"prompt", "chosen", "rejected"} strings.

Public API:
    read_preference_pairs(path) -> list[Pair]

Texts are taken as they are (no prompt format is applied): the file is expected to hold prompts already in
the format the reward model is trained on.
"""

from __future__ import annotations

from pathlib import Path

from codepmp.reasoning.jsonl import read_jsonl
from codepmp.pairs import Pair


def read_preference_pairs(path: str | Path) -> list[Pair]:
    pairs = []
    for r in read_jsonl(path, "preference pairs"):
        pair = Pair(r.get("prompt", str), r.get("chosen", str), r.get("rejected", str))
        # An empty side gives the reward model nothing to prefer; it is a broken export, not a pair.
        for field in ("chosen", "rejected"):
            if not getattr(pair, field).strip():
                raise r.fail(f"field '{field}' is empty")
        pairs.append(pair)
    return pairs
