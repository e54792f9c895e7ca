"""Finds held-out problems inside other texts, so that pairs imported from elsewhere cannot train on them.

Public API:
    HeldOut(texts)                     the problem texts (dev questions, logic passages) to look for
    HeldOut.found_in(text) -> bool     whether one of them occurs in `text`, whole
    drop_held_out(pairs, held_out) -> (list[Pair], int)   pairs whose prompt holds none, and how many went

Texts are compared as sequences of lower-case word and punctuation tokens, so layout and case do not hide a
copy, and a question glued to its prompt ('Instruction:Tom has...') is still found. Every candidate match is
confirmed token by token: a shared opening is not enough.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence

from codepmp.pairs import Pair

_TOKEN = re.compile(r"\w+|[^\w\s]")
ANCHOR_TOKENS = 8
"""Tokens of a held-out text's opening that index it: a text is confirmed only where its opening occurs."""


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_TOKEN.findall(text.lower()))


class HeldOut:
    def __init__(self, texts: Iterable[str]):
        self._by_anchor: dict[tuple[str, ...], list[tuple[str, ...]]] = defaultdict(list)
        for tokens in {_tokens(t) for t in texts}:
            if tokens:
                self._by_anchor[tokens[:ANCHOR_TOKENS]].append(tokens)
        self._anchor_lengths = sorted({len(anchor) for anchor in self._by_anchor})

    def __len__(self) -> int:
        return sum(map(len, self._by_anchor.values()))

    def found_in(self, text: str) -> bool:
        tokens = _tokens(text)
        for n in self._anchor_lengths:
            for start in range(len(tokens) - n + 1):
                for held in self._by_anchor.get(tokens[start:start + n], ()):
                    if tokens[start:start + len(held)] == held:
                        return True
        return False


def drop_held_out(pairs: Sequence[Pair], held_out: HeldOut) -> tuple[list[Pair], int]:
    """The pairs whose prompt contains no held-out text, and the count of the others."""
    kept = [p for p in pairs if not held_out.found_in(p.prompt)]
    return kept, len(pairs) - len(kept)
