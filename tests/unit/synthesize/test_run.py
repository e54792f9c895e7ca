"""Synthesis of preference pairs: file selection, drop rules with their reasons, the resumable row cache,
shards that merge to the single-shard result, and the paper profile's models and sampling."""

import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from codepmp.config import CrawlConfig, DecontamConfig, SynthesizeConfig, load_config
from codepmp.generate.backend import Backend, Completion, TransformersBackend
from codepmp.synthesize.run import DROP_REASONS, is_empty, merge_shards, run_synthesis, synthesize_shard
from codepmp.testing import write_tiny_model


@pytest.mark.parametrize("text, empty", [("", True), ("  \n", True), ("```python\n```", True), ("```\n\n```", True),
                                         ("```python\nx = 1\n```", False), ("def f(): pass", False)])
def test_is_empty(text, empty):
    assert is_empty(text) is empty


def test_select_files_by_category_then_max_pairs():
    import pytest

    from codepmp.config import SynthesizeConfig
    from codepmp.errors import InputError
    from codepmp.synthesize.run import select_files

    rows = [{"id": str(i), "category": "engineering" if i % 2 else "other"} for i in range(6)]
    assert select_files(rows, SynthesizeConfig(max_pairs=0), "x") == rows
    picked = select_files(rows, SynthesizeConfig(max_pairs=2, categories=["engineering"]), "x")
    assert [r["id"] for r in picked] == ["1", "3"]
    with pytest.raises(InputError, match="crawl.classify.enabled"):
        select_files([{"id": "1", "category": None}], SynthesizeConfig(categories=["engineering"]), "x")
    with pytest.raises(InputError, match="no crawled file"):
        select_files(rows, SynthesizeConfig(categories=["tests"]), "x")
    with pytest.raises(InputError, match="no crawled files"):
        select_files([], SynthesizeConfig(), "x")


@pytest.fixture(scope="module")
def crawled(tmp_path_factory) -> str:
    """Six small real Python files, crawled."""
    import inspect
    import shlex
    import string
    import textwrap

    import colorsys
    import bisect
    import fnmatch

    from codepmp.crawl import run_crawl

    root = tmp_path_factory.mktemp("synth-crawl")
    corpus = root / "corpus"
    corpus.mkdir()
    for module in (shlex, string, textwrap, colorsys, bisect, fnmatch):
        (corpus / f"{module.__name__}.py").write_text(inspect.getsource(module))
    run_crawl(CrawlConfig(sources=[str(corpus)], max_bytes=100_000, decontam=DecontamConfig(enabled=False)),
              root / "crawl", progress=False)
    return str(root / "crawl")


@pytest.fixture(scope="module")
def weak_model(tmp_path_factory) -> str:
    """Another random init: greedy chosen and rejected differ, as with a real strong and weak model."""
    return str(write_tiny_model(tmp_path_factory.mktemp("synth-weak") / "lm", seed=1))


def tiny_cfg(model: str, **changes) -> SynthesizeConfig:
    return dataclasses.replace(SynthesizeConfig(
        summarizer_model=model, strong_model=model, weak_model=model, max_pairs=0, max_code_chars=200,
        description_tokens=6, code_tokens=6, chunk_rows=2, batch_size=4, temperature=0.7), **changes)


class Scripted(Backend):
    """A stand-in model whose answers the test chooses, per role, to exercise the drop rules."""

    def __init__(self, spec: str, answers: dict[str, list[Completion]]):
        self.spec, self.answers = spec, answers

    def complete(self, prompts, sampling, desc="generate"):
        return [self.answers[self.spec].pop(0) for _ in prompts]


def test_malformed_outputs_are_dropped_with_their_reason(crawled, tmp_path):
    ok = Completion("def f():\n    return 1")
    answers = {
        "summarizer": [Completion(""), Completion("Adds.", finished=False), Completion("Sorts."),
                       Completion("Parses."), Completion("Joins."), Completion("Maps.")],
        "strong": [Completion("```python\n```"), ok, ok, ok],
        "weak": [ok, Completion("```python\ndef f(", finished=False), Completion("def f():\n    return 1\n"),
                 Completion("f = None")],
    }
    cfg = tiny_cfg("x", summarizer_model="summarizer", strong_model="strong", weak_model="weak", chunk_rows=6,
                   drop_unfinished=True)
    stats = run_synthesis(cfg, crawled, tmp_path / "out", backend_factory=lambda c, spec: Scripted(spec, answers))
    assert stats["dropped"] == {"empty_description": 1, "unfinished_description": 1, "empty_chosen": 1,
                                "unfinished_chosen": 0, "empty_rejected": 0, "unfinished_rejected": 1,
                                "identical": 1}
    assert set(stats["dropped"]) == set(DROP_REASONS)
    [pair] = pq.read_table(tmp_path / "out" / "pairs.parquet").to_pylist()
    assert (pair["description"], pair["chosen"], pair["rejected"]) == ("Maps.", ok.text, "f = None")
    assert (pair["chosen_parses"], pair["rejected_chars"]) == (True, 8)


def test_every_pair_dropped_is_a_clear_error(crawled, tmp_path):
    from codepmp.errors import InputError

    answers = {"m": [Completion("")] * 6}
    with pytest.raises(InputError, match="every one of 6 files was dropped"):
        run_synthesis(tiny_cfg("m", chunk_rows=6), crawled, tmp_path / "out",
                      backend_factory=lambda c, spec: Scripted(spec, answers))


def test_unfinished_outputs_are_kept_and_counted_when_dropping_is_off(crawled, tmp_path):
    answers = {"m": [Completion("Adds.", finished=False)] * 6 + [Completion("a = 1", finished=False)] * 6
               + [Completion("b = 2")] * 6}
    stats = run_synthesis(tiny_cfg("m", chunk_rows=6, drop_unfinished=False), crawled, tmp_path / "out",
                          backend_factory=lambda c, spec: Scripted(spec, answers))
    assert stats["pairs"] == 6 and sum(stats["dropped"].values()) == 0
    assert stats["truncated_kept"] == {"description": 6, "chosen": 6, "rejected": 0}
    table = pq.read_table(tmp_path / "out" / "pairs.parquet")
    assert table["chosen_parses"].to_pylist() == [True] * 6 and table["rejected_chars"].to_pylist() == [5] * 6


class Dies(Backend):
    """The real backend, until the process "dies" after `calls` chunk generations (a killed pod)."""

    def __init__(self, inner: Backend, budget: list[int], log: list[str]):
        self.inner, self.budget, self.log = inner, budget, log

    def complete(self, prompts, sampling, desc="generate"):
        if self.budget[0] == 0:
            raise KeyboardInterrupt("killed")
        self.budget[0] -= 1
        self.log.append(desc)
        return self.inner.complete(prompts, sampling, desc)


@pytest.mark.parametrize("killed_after", [0, 2, 4, 8])
def test_a_killed_shard_resumes_from_its_row_cache_and_equals_an_uninterrupted_run(crawled, tiny_model, tmp_path,
                                                                                 killed_after):
    """Sampled (temperature 0.7) generation: each chunk has its own seed, so where the kill fell does not matter."""
    cfg = tiny_cfg(tiny_model)  # 6 files in 3 chunks: 9 chunk generations
    models: dict[str, TransformersBackend] = {}

    def real(c, spec):
        return models.setdefault(spec, TransformersBackend(spec, c.batch_size))

    reference = run_synthesis(cfg, crawled, tmp_path / "reference", backend_factory=real)
    first, second = [], []
    with pytest.raises(KeyboardInterrupt):
        run_synthesis(cfg, crawled, tmp_path / "run", backend_factory=lambda c, s: Dies(real(c, s), [killed_after], first))
    run_synthesis(cfg, crawled, tmp_path / "run", backend_factory=lambda c, s: Dies(real(c, s), [99], second))
    assert len(first) == killed_after and len(first) + len(second) == 9  # nothing generated twice
    pairs = pq.read_table(tmp_path / "run" / "pairs.parquet").to_pylist()
    assert len({p["id"] for p in pairs}) == len(pairs) == reference["pairs"]
    assert pairs == pq.read_table(tmp_path / "reference" / "pairs.parquet").to_pylist()


def test_shards_split_the_chunks_and_merge_to_the_single_shard_result(crawled, tiny_model, weak_model, tmp_path):
    cfg = tiny_cfg(tiny_model, weak_model=weak_model, temperature=0.0)
    one = run_synthesis(cfg, crawled, tmp_path / "one")
    shard_dirs = []
    for rank in (2, 0, 1):  # tasks finish in any order
        stats = synthesize_shard(dataclasses.replace(cfg, world_size=3), crawled, tmp_path / "cache",
                                 tmp_path / f"shard-{rank}", rank)
        assert stats["rank"] == rank and stats["chunks"] == 1 and stats["files"] == 2
        shard_dirs.append(tmp_path / f"shard-{rank}")
    three = merge_shards(shard_dirs, tmp_path / "three")
    assert (three["pairs"], three["dropped"], three["shards"]) == (one["pairs"], one["dropped"], 3)
    key = lambda rows: sorted(rows, key=lambda r: r["id"])  # noqa: E731
    assert key(pq.read_table(tmp_path / "three" / "pairs.parquet").to_pylist()) == key(
        pq.read_table(tmp_path / "one" / "pairs.parquet").to_pylist())
    with pytest.raises(Exception, match="shards overlap"):
        merge_shards(shard_dirs + [tmp_path / "shard-0"], tmp_path / "twice")
    # A finished shard is not generated again: its marker and pairs are copied out.
    again = synthesize_shard(dataclasses.replace(cfg, world_size=3), crawled, tmp_path / "cache",
                             tmp_path / "again", 0, backend_factory=lambda c, s: Dies(None, [0], []))
    assert again == json.loads((tmp_path / "shard-0" / "stats.json").read_text())


def test_other_settings_do_not_reuse_the_cache(crawled, tiny_model, weak_model, tmp_path):
    cfg = tiny_cfg(tiny_model, weak_model=weak_model, temperature=0.0)
    run_synthesis(cfg, crawled, tmp_path / "a", location=tmp_path / "cache")
    log: list[str] = []
    factory = lambda c, s: Dies(TransformersBackend(s, c.batch_size), [99], log)  # noqa: E731
    run_synthesis(dataclasses.replace(cfg, code_tokens=7), crawled, tmp_path / "b", location=tmp_path / "cache",
                  backend_factory=factory)
    assert log.count("description") == 3 and log.count("chosen") == 3  # new fingerprint: all regenerated
    log.clear()
    run_synthesis(dataclasses.replace(cfg, concurrency=3, world_size=1), crawled, tmp_path / "c",
                  location=tmp_path / "cache", backend_factory=factory)
    assert log == []  # operational settings reuse it


def test_bad_shard_settings_are_config_errors(crawled, tmp_path):
    from codepmp.errors import ConfigError

    with pytest.raises(ConfigError, match="synthesize.chunk_rows must be at least 1"):
        synthesize_shard(SynthesizeConfig(chunk_rows=0), crawled, tmp_path, tmp_path / "o")
    with pytest.raises(ConfigError, match="rank 2 is outside 0..1"):
        synthesize_shard(SynthesizeConfig(world_size=2), crawled, tmp_path, tmp_path / "o", rank=2)


def test_paper_profile_is_the_papers_models_and_sampling():
    paper = load_config("paper").synthesize
    assert (paper.summarizer_model, paper.strong_model, paper.weak_model) == (
        "deepseek-ai/deepseek-coder-1.3b-instruct", "deepseek-ai/deepseek-coder-6.7b-instruct",
        "deepseek-ai/deepseek-coder-1.3b-instruct")
    assert (paper.temperature, paper.description_tokens, paper.code_tokens) == (0.7, 1024, 1024)
    assert paper.backend == "vllm" and paper.drop_unfinished and paper.world_size > 1
