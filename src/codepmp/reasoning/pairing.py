"""Correct-against-incorrect preference pairs for one problem, shared by sampled and Math-Shepherd solutions.

Public API:
    pair_up(prompt, correct, incorrect, max_pairs, rng) -> list[Pair]
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from codepmp.reasoning.tasks import response
from codepmp.pairs import Pair


def _distinct(texts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(t for t in texts if t.strip()))


def pair_up(prompt: str, correct: Sequence[str], incorrect: Sequence[str], max_pairs: int,
            rng: random.Random) -> list[Pair]:
    """Up to `max_pairs` pairs of a correct (chosen) and an incorrect (rejected) solution, spread so that every
    correct solution meets an incorrect one before any solution is used twice.

    Duplicate and blank texts are dropped first (greedy or low-temperature sampling repeats itself, and a pair
    of a text with itself teaches nothing). Both lists are shuffled with `rng`, then pairs are taken along
    diagonals of the correct x incorrect grid: diagonal d pairs correct i with incorrect (i + d) mod n."""
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1, got {max_pairs}")
    good, bad = _distinct(correct), _distinct(incorrect)
    rng.shuffle(good)
    rng.shuffle(bad)
    order = sorted(((i, j) for i in range(len(good)) for j in range(len(bad))),
                   key=lambda ij: ((ij[1] - ij[0]) % len(bad), ij[0]))
    return [Pair(prompt, response(good[i]), response(bad[j])) for i, j in order[:max_pairs]]
