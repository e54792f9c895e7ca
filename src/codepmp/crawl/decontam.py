"""Decontamination: drop crawled files that share a long word n-gram with an evaluation set.

    from codepmp.config import DecontamConfig
    from codepmp.crawl.decontam import Decontaminator
    decontam = Decontaminator.from_config(DecontamConfig(sets=["../shared/data/gsm8k", "math/dev.jsonl"]))
    tokens = words(text)
    decontam.contaminated([tokens], [word_ids(tokens)])  # [True]: shares a 13-word window with an eval set

A file is contaminated when any window of `ngram` normalized content words (the words of near-dedup: lower
case, punctuation and layout ignored; then numbers and one-letter words dropped, see `content_word_ids`) also
occurs in a string field of an evaluation row. 13 words is long enough
that ordinary code and prose do not collide by chance, and short enough to catch a copied problem statement
or solution inside a docstring or a test fixture.

Evaluation sets are JSON Lines or JSON files (a list of rows), or folders of them; every string value of a
row (nested lists and objects included) is indexed. By default the packaged GSM8K sample is indexed, plus
every such file under `$CODEPMP_EVAL_DATA` (point it at your GSM8K / MATH / LogiQA 2.0 / ReClor copies on a
cluster). On top of those, `reasoning_sets` holds the dev and evaluation files of the run's own reasoning stage:
the crawl stage fills it from the pipeline's `reasoning` section (`reasoning.build.evaluation_files`), so the
code corpus never holds a problem that the same run finetunes or evaluates on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from codepmp.config import DecontamConfig
from codepmp.crawl.dedup import batch_ngram_hashes, ngram_hashes, word_ids, words
from codepmp.errors import InputError

EVAL_DATA_VAR = "CODEPMP_EVAL_DATA"
EVAL_SUFFIXES = (".jsonl", ".json")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _rows(path: Path) -> Iterator[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"evaluation set {path} is not valid JSON: {exc}") from None
        yield from data if isinstance(data, list) else [data]
        return
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"evaluation set {path} line {number} is not valid JSON: {exc}") from None


def eval_files(sets: list[str], key: str = "crawl.decontam.sets") -> list[Path]:
    """The JSON/JSONL files named by `sets` (files or folders, searched recursively), sorted; InputError if none.
    `key` is the setting that named them, for the message."""
    files: list[Path] = []
    for item in sets:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in EVAL_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"evaluation set folder {path} has no {'/'.join(EVAL_SUFFIXES)} files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"evaluation set {path} does not exist ({key})")
    return files


def default_sets() -> list[str]:
    """The packaged reasoning data, plus `$CODEPMP_EVAL_DATA` when set."""
    packaged = resources.files("codepmp.reasoning").joinpath("data")
    sets = [str(packaged)]
    if os.environ.get(EVAL_DATA_VAR):
        sets.append(os.environ[EVAL_DATA_VAR])
    return sets


def content_mask(tokens: list[bytes]) -> np.ndarray:
    """Which words carry content: two characters or more, not all digits.

    Without this, number runs and single letters (matrices, sequences, `a b c d ...`) in MATH solutions
    match test fixtures and tables all over ordinary code: on the stdlib plus site-packages, 13-grams of
    all words flagged 468 files, nearly all for runs like "0 0 0 ..." or "2 3 4 5 ...".
    """
    count = len(tokens)
    longer = np.fromiter(map(len, tokens), dtype=np.int64, count=count) > 1
    digits = np.fromiter(map(bytes.isdigit, tokens), dtype=bool, count=count)
    return longer & ~digits


def content_word_ids(text: str) -> np.ndarray:
    """Ids of the content words of `text` (see `content_mask`)."""
    tokens = words(text)
    return word_ids(tokens)[content_mask(tokens)] if tokens else np.zeros(0, np.uint64)


MIN_DISTINCT_FRACTION = 0.5
"""Evaluation n-grams with fewer distinct words than this fraction of `ngram` are not indexed: repetitive runs
("sqrt sqrt ...", "sin cos sin cos ...") in math solutions also fill symbolic-math test files."""


def _distinct_windows(ids: np.ndarray, n: int) -> np.ndarray:
    """`ngram_hashes(ids, n)` of the windows that have at least MIN_DISTINCT_FRACTION * n distinct words."""
    windows = np.sort(np.lib.stride_tricks.sliding_window_view(ids, n), axis=1)
    distinct = 1 + np.count_nonzero(np.diff(windows, axis=1), axis=1)
    return ngram_hashes(ids, n)[distinct >= MIN_DISTINCT_FRACTION * n]


BITMAP_BITS = 1 << 25


def _bit_slots(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low = (values & np.uint64(BITMAP_BITS - 1)).astype(np.int64)
    return low >> 3, (1 << (low & 7)).astype(np.uint8)


class Decontaminator:
    """A set of hashed `ngram`-word windows of the evaluation data."""

    def __init__(self, ngram: int, texts: list[str], sources: list[str]):
        if ngram < 1:
            from codepmp.errors import ConfigError

            raise ConfigError(f"crawl.decontam.ngram must be >= 1, got {ngram}")
        self.ngram = ngram
        self.sources = sources
        grams = [_distinct_windows(ids, ngram) for ids in map(content_word_ids, texts) if len(ids) >= ngram]
        self._grams = np.unique(np.concatenate(grams)) if grams else np.zeros(0, np.uint64)
        # A 4 MiB bitmap of the low hash bits answers "surely not there" for ~97 % of the windows of 1M
        # evaluation n-grams with one cached lookup each; only the rest are searched in the sorted array.
        self._bitmap = np.zeros(BITMAP_BITS // 8, dtype=np.uint8)
        np.bitwise_or.at(self._bitmap, *_bit_slots(self._grams))

    @classmethod
    def from_config(cls, cfg: DecontamConfig) -> Decontaminator:
        files = eval_files(cfg.sets or default_sets())
        files += [p for p in eval_files(cfg.reasoning_sets, "crawl.decontam.reasoning_sets") if p not in files]
        texts = [text for path in files for row in _rows(path) for text in _strings(row)]
        return cls(cfg.ngram, texts, [str(p) for p in files])

    @property
    def size(self) -> int:
        """Distinct evaluation n-grams indexed."""
        return len(self._grams)

    def contaminated(self, token_lists: list[list[bytes]], id_arrays: list[np.ndarray]) -> list[bool]:
        """For each file (its words and their ids, as near-dedup computes them): does a window of `ngram` of its
        content words occur in the evaluation data?"""
        if not len(self._grams):
            return [False] * len(id_arrays)
        content = [ids[content_mask(tokens)] if len(ids) else ids for tokens, ids in zip(token_lists, id_arrays)]
        grams = [g if len(ids) >= self.ngram else g[:0]
                 for ids, g in zip(content, batch_ngram_hashes(content, self.ngram))]
        # One sorted lookup for the whole batch: a Python set would cost an int object per window.
        lengths = np.array([len(g) for g in grams], dtype=np.int64)
        contaminated = np.zeros(len(grams), dtype=bool)
        nonempty = np.flatnonzero(lengths)
        if len(nonempty):
            joined = np.concatenate(grams)
            byte, bit = _bit_slots(joined)
            found = (self._bitmap[byte] & bit) != 0
            maybe = joined[found]
            found[found] = self._grams[np.minimum(np.searchsorted(self._grams, maybe), len(self._grams) - 1)] == maybe
            starts = np.cumsum(lengths) - lengths
            contaminated[nonempty] = np.add.reduceat(found, starts[nonempty]) > 0
        return contaminated.tolist()
