"""Near-dedup and decontamination building blocks: words, shingles, MinHash equal to datasketch's, LSH checks.

    .venv/bin/python -m pytest tests/unit/test_crawl_dedup.py -q
"""

from __future__ import annotations

import inspect
import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash

from codepmp.config import DecontamConfig, DedupConfig
from codepmp.crawl import dedup
from codepmp.crawl.decontam import Decontaminator, content_mask
from codepmp.crawl.dedup import Deduplicator, batch_ngram_hashes, content_hash, ngram_hashes, word_ids, words
from codepmp.errors import ConfigError, InputError

TEXTWRAP = inspect.getsource(textwrap)


def test_words_lower_case_and_drop_punctuation():
    assert words("def Foo_bar(x, y=2):\n    return x+y  # Sum!") == [
        b"def", b"foo_bar", b"x", b"y", b"2", b"return", b"x", b"y", b"sum"]
    assert words("café = naïve") == ["café".encode(), "naïve".encode()]
    assert words("") == [] and words("+-*/ ()") == []


def test_word_ids_are_stable_and_distinct():
    ids = word_ids([b"alpha", b"beta", b"alpha"])
    assert ids.dtype == np.uint64 and ids[0] == ids[2] != ids[1]
    dedup._word_hashes.clear()
    assert np.array_equal(word_ids([b"alpha", b"beta", b"alpha"]), ids)


def test_ngram_hashes_windows_and_short_inputs():
    ids = word_ids([w.encode() for w in "a b c d e f g".split()])
    assert len(ngram_hashes(ids, 5)) == 3
    assert len(ngram_hashes(ids[:3], 5)) == 1 and len(ngram_hashes(ids[:0], 5)) == 0
    assert ngram_hashes(ids, 5)[0] == ngram_hashes(ids[:5], 5)[0]
    assert ngram_hashes(ids[:5], 5)[0] != ngram_hashes(ids[[1, 0, 2, 3, 4]], 5)[0]  # order matters


def test_batch_ngram_hashes_equal_one_at_a_time():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 2**63, size=n, dtype=np.uint64) for n in (0, 1, 4, 5, 6, 40, 3, 100)]
    for got, ids in zip(batch_ngram_hashes(arrays, 5), arrays):
        assert np.array_equal(got, ngram_hashes(ids, 5))


def test_signatures_equal_datasketch_minhash(monkeypatch):
    monkeypatch.setattr(dedup, "SIGNATURE_BLOCK_VALUES", 1 << 12)  # force files to span several blocks
    texts = [TEXTWRAP, "x", "", TEXTWRAP[:500], inspect.getsource(json)]
    sigs = Deduplicator(DedupConfig()).signatures([words(t) for t in texts])
    assert sigs[2] is None
    for text, sig in zip(texts, sigs):
        if not words(text):
            continue
        reference = MinHash(num_perm=128, seed=1, scheme="affine64", hashfunc=lambda v: v)
        reference.update_batch(ngram_hashes(word_ids(words(text)), 5).tolist())
        assert np.array_equal(reference.hashvalues, sig)


def test_check_drops_exact_and_near_and_keeps_distinct():
    d = Deduplicator(DedupConfig())
    renamed = re.sub(r"\bwidth\b", "line_width", TEXTWRAP)
    texts = [TEXTWRAP, TEXTWRAP.replace("\n", "   \r\n"), renamed, inspect.getsource(json)]
    sigs = d.signatures([words(t) for t in texts])
    assert [d.check(content_hash(t), s) for t, s in zip(texts, sigs)] == [
        None, "duplicate", "near_duplicate", None]


def test_near_off_keeps_near_duplicates_and_threshold_one_needs_equal_signatures():
    renamed = re.sub(r"\bwidth\b", "line_width", TEXTWRAP)
    for cfg in (DedupConfig(near=False), DedupConfig(threshold=1.0)):
        d = Deduplicator(cfg)
        sigs = d.signatures([words(TEXTWRAP), words(renamed)])
        assert [d.check(content_hash(t), s) for t, s in zip((TEXTWRAP, renamed), sigs)] == [None, None]


def test_content_hash_ignores_line_endings_and_trailing_space_only():
    assert content_hash("a = 1\nb = 2\n") == content_hash("a = 1  \r\nb = 2\r\n\n")
    assert content_hash("a = 1\n") != content_hash("a  = 1\n")


def test_bad_dedup_config_is_a_config_error():
    with pytest.raises(ConfigError, match="crawl.dedup"):
        Deduplicator(DedupConfig(bands=0))


def test_content_mask_keeps_words_of_two_letters_or_more():
    tokens = [b"a", b"12", b"x1", b"pills", b"0", b"of"]
    assert content_mask(tokens).tolist() == [False, False, True, True, False, True]


def test_decontaminator_catches_a_problem_not_number_runs(tmp_path: Path):
    problem = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
               "How many clips did Natalia sell altogether in April and May?")
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"question": problem, "answer": "0 " * 40 + "\n#### 72"}) + "\n")
    d = Decontaminator.from_config(DecontamConfig(sets=[str(evals)]))
    texts = [f'"""{problem.upper()}"""\nprint(72)\n', "table = [" + "0, " * 60 + "]\n",
             "def sell(clips):\n    return clips // 2\n"]
    token_lists = [words(t) for t in texts]
    assert d.contaminated(token_lists, [word_ids(t) for t in token_lists]) == [True, False, False]


def test_missing_or_broken_eval_sets_are_input_errors(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        Decontaminator.from_config(DecontamConfig(sets=[str(tmp_path / "nope.jsonl")]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\nnot json\n')
    with pytest.raises(InputError, match="line 2"):
        Decontaminator.from_config(DecontamConfig(sets=[str(bad)]))
