import pytest

from codepmp.models import cache_dir
from codepmp.synthesize.prompts import description_prompt, pair_prompt
from codepmp.synthesize.run import is_empty
from codepmp.testing import write_tiny_model


def test_description_prompt_is_the_papers_byte_for_byte_and_truncates_code():
    """The text of DESIGN.md (from the paper's released code), with the code cut at `max_chars`."""
    assert description_prompt("x = 1\n" * 100, max_chars=12) == (
        "Please generate a corresponding instruction based on this code snippet. In the instruction you need to "
        "analyze the intent and function of this code snippet (describe the operation the code performs and how "
        "it achieves its function).\n\n#### Code snippet:\n```x = 1\nx = 1\n```\n\n#### Instructions:")


def test_pair_prompt_is_the_papers():
    assert pair_prompt("Adds numbers.") == (
        "### Instruction: Please read the following code description carefully and generate the actual code "
        "implementation based on this description. Please make sure the code is logical and readable.\n\n"
        "### Code Description:\nAdds numbers.\n\n### Response:")


@pytest.mark.parametrize("text, empty", [("", True), ("  \n", True), ("```python\n```", True), ("```\n\n```", True),
                                         ("```python\nx = 1\n```", False), ("def f(): pass", False)])
def test_is_empty(text, empty):
    assert is_empty(text) is empty


def test_batched_generation_matches_one_by_one(tmp_path):
    """Left padding and length sorting must not change what a prompt generates (greedy)."""
    from codepmp.generate.backend import Sampling, TransformersBackend

    model = str(write_tiny_model(tmp_path / "lm"))
    prompts = ["def add(a, b):", "x", "class Stack:\n    def push(self, item):", "for i in range(10):"]
    greedy = Sampling(max_new_tokens=6, temperature=0.0)
    batched = TransformersBackend(model, batch_size=4).generate(prompts, greedy)
    single = TransformersBackend(model, batch_size=1).generate(prompts, greedy)
    assert batched == single and len(batched) == 4


def test_prompts_with_a_common_prefix_share_its_prefill_and_generate_the_same(tmp_path):
    """The paper's prompts share 70+ tokens; batched with one shared prefill, greedy texts equal one-by-one."""
    from codepmp.generate.backend import Sampling, TransformersBackend

    model = str(write_tiny_model(tmp_path / "lm"))
    prompts = [description_prompt(code, 200) for code in ("x = 1", "def add(a, b):\n    return a + b",
                                                           "class Stack:\n    pass", "for i in range(10): print(i)")]
    batched = TransformersBackend(model, batch_size=4)
    rows = [batched.tokenizer(batched.format(p), add_special_tokens=False)["input_ids"] for p in prompts]
    inputs = batched._batch(rows, max_new_tokens=6)
    assert "cache" in inputs and inputs["cache"].get_seq_length() >= 16  # the shared path is the one taken
    greedy = Sampling(max_new_tokens=6, temperature=0.0)
    assert batched.generate(prompts, greedy) == TransformersBackend(model, batch_size=1).generate(prompts, greedy)
    # Continuous batching shares the prefix too (prompts arrive in groups of 2 here): still `generate`'s texts.
    eos = [batched.tokenizer.eos_token_id]
    alone = [batched.tokenizer.decode(_generate_alone(batched, p, 6, eos), skip_special_tokens=True).strip()
             for p in prompts]
    batched.batch_size = 2
    assert batched.generate(prompts, greedy) == alone


def _generate_alone(backend, prompt: str, max_new_tokens: int, eos: list[int]) -> list[int]:
    """transformers' own greedy `generate` on one prompt: the reference continuous batching must reproduce."""
    inputs = backend.tokenizer(backend.format(prompt), return_tensors="pt",
                               add_special_tokens=not backend.tokenizer.chat_template)
    out = backend.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos or None,
                                 pad_token_id=backend.tokenizer.pad_token_id)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_continuous_batching_generates_what_generate_does_one_prompt_at_a_time(tmp_path):
    """Seven prompts through two decoding rows: rows end at different steps and the queue refills them, with
    padding added and trimmed as the batch changes; every greedy completion equals `generate` on its own."""
    from codepmp.generate.backend import Sampling, TransformersBackend

    backend = TransformersBackend(str(write_tiny_model(tmp_path / "lm")), batch_size=2)
    assert backend.refill
    prompts = ["def add(a, b):", "x", "class Stack:\n    def push(self, item):", "for i in range(10):",
               "import os\nprint(os.getcwd())", "while True:\n    pass", "for i in range(10):"]
    # (the last repeats one, as k samples of a problem do: equal prompts in a group share one prefill)
    # A random model never ends a turn: make tokens it does write into end-of-turn tokens, so rows end early.
    free = [_generate_alone(backend, p, 12, []) for p in prompts]
    ends = sorted({free[0][3], free[1][3], free[4][7]})
    backend.model.generation_config.eos_token_id = ends
    done = backend.complete(prompts, Sampling(max_new_tokens=12, temperature=0.0))
    eos = sorted({backend.tokenizer.eos_token_id, *ends})
    for prompt, completion in zip(prompts, done, strict=True):
        alone = _generate_alone(backend, prompt, 12, eos)
        end = next((n for n, token in enumerate(alone) if token in eos), None)
        assert completion.tokens == (len(alone) if end is None else end)
        assert completion.finished == (end is not None)
        assert completion.text == backend.tokenizer.decode(alone[:end], skip_special_tokens=True).strip()
    lengths = {c.tokens for c in done}
    assert len(lengths) >= 2 and any(c.finished for c in done), lengths  # rows did end at different steps


@pytest.mark.skipif(not (cache_dir() / "smollm2-135m-instruct" / "config.json").exists(),
                    reason="smollm2-135m-instruct is not in the model cache (run `make test` or `make models`)")
def test_continuous_batching_on_a_real_model_matches_generate():
    """A random tiny model hardly depends on positions; SmolLM2 does, so this catches wrong position ids in the
    shared-prefix layout (prefix, gap, rest) and in the padding that admitting rows adds."""
    from codepmp.generate.backend import Sampling, TransformersBackend

    backend = TransformersBackend("smollm2-135m-instruct", batch_size=2)
    prompts = [description_prompt(code, 400) for code in (
        "x = 1", "def add(a, b):\n    return a + b", "class Stack:\n    def __init__(self):\n        self.items = []",
        "import os\nfor name in os.listdir('.'):\n    print(name.upper())", "while True:\n    break")]
    done = backend.generate(prompts, Sampling(max_new_tokens=24, temperature=0.0))
    eos = sorted({backend.tokenizer.eos_token_id, backend.model.generation_config.eos_token_id} - {None})
    for prompt, text in zip(prompts, done, strict=True):
        alone = _generate_alone(backend, prompt, 24, eos)
        end = next((n for n, token in enumerate(alone) if token in eos), None)
        assert text == backend.tokenizer.decode(alone[:end], skip_special_tokens=True).strip()


def test_sampling_draws_from_the_tempered_top_p_distribution():
    import torch

    from codepmp.generate.backend import Sampling, pick_next

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).repeat(20000, 1)
    generator = torch.Generator().manual_seed(0)
    drawn = pick_next(Sampling(1, temperature=0.7), generator, logits)
    expected = torch.softmax(logits[0] / 0.7, -1)
    observed = torch.bincount(drawn, minlength=5) / len(drawn)
    assert torch.allclose(observed, expected, atol=0.01), (observed, expected)
    # top_p 0.8 keeps the two most likely tokens (their mass at T=0.7 is 0.94 > 0.8; the first alone 0.77 < 0.8).
    nucleus = pick_next(Sampling(1, temperature=0.7, top_p=0.8), generator, logits)
    assert set(nucleus.tolist()) == {0, 1}
    kept = expected[:2] / expected[:2].sum()
    assert abs(float((nucleus == 0).float().mean()) - float(kept[0])) < 0.01
    assert pick_next(Sampling(1, temperature=0.0), generator, logits[:2]).tolist() == [0, 0]


def test_sampled_completions_repeat_under_a_seed_and_change_with_it(tiny_model):
    backend = TransformersBackend(tiny_model, batch_size=2)
    prompts = ["def add(a, b):", "x", "class Stack:", "for i in range(10):"]
    runs = [[c.text for c in backend.complete(prompts, Sampling(max_new_tokens=8, temperature=1.0, seed=seed))]
            for seed in (3, 3, 4)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


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


# --- the synthesis step: drops, row cache and resume, shards, quality signals, backends -----------------------

import dataclasses  # noqa: E402
import json  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402

from codepmp.config import CrawlConfig, DecontamConfig, SynthesizeConfig, load_config  # noqa: E402
from codepmp.generate.backend import Backend, Completion, Sampling, TransformersBackend  # noqa: E402
from codepmp.synthesize.run import DROP_REASONS, merge_shards, run_synthesis, synthesize_shard  # noqa: E402


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
def tiny_model(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("synth-lm") / "lm"))


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


def test_stop_strings_end_a_completion(tiny_model):
    backend = TransformersBackend(tiny_model, batch_size=2)
    prompts = ["def add(a, b):", "class Stack:"]
    free = backend.complete(prompts, Sampling(max_new_tokens=12, temperature=0.0))
    assert all(not c.finished and c.tokens == 12 for c in free)  # a random model never says end of turn
    stop = free[0].text[4:7]
    cut = backend.complete(prompts, Sampling(max_new_tokens=12, temperature=0.0, stop=(stop,)))
    assert cut[0].finished and cut[0].text == free[0].text[:free[0].text.find(stop)].strip()
    assert cut[0].tokens < 12


def test_paper_profile_is_the_papers_models_and_sampling():
    paper = load_config("paper").synthesize
    assert (paper.summarizer_model, paper.strong_model, paper.weak_model) == (
        "deepseek-ai/deepseek-coder-1.3b-instruct", "deepseek-ai/deepseek-coder-6.7b-instruct",
        "deepseek-ai/deepseek-coder-1.3b-instruct")
    assert (paper.temperature, paper.description_tokens, paper.code_tokens) == (0.7, 1024, 1024)
    assert paper.backend == "vllm" and paper.drop_unfinished and paper.world_size > 1


@pytest.mark.parametrize("text, language, parses", [
    ("```python\ndef f():\n    return 1\n```\nThis returns one.", "python", True),
    ("def f(:\n    pass", "python", False),
    ("Here:\n```c\nint main(void) { return 0; }\n```", "c", True),
    ("int main(void { return 0; }", "c", False),
    ("fn main() { let x = 1; }", "rust", True),
    ("public class A { void f() { int x = 1; } }", "java", True),
    ("func main() {", "go", False),
    ("puts 'hi'", "ruby", None),
])
def test_parses_as_code_in_its_language(text, language, parses):
    from codepmp.synthesize.quality import parses as parses_as

    assert parses_as(text, language) is parses


def test_vllm_backend_without_vllm_is_a_clear_config_error(monkeypatch):
    import sys

    from codepmp.errors import ConfigError
    from codepmp.generate.vllm_backend import VLLMBackend

    monkeypatch.setitem(sys.modules, "vllm", None)  # what an image without vllm looks like to `import vllm`
    with pytest.raises(ConfigError, match="vllm is not installed"):
        VLLMBackend("m")


def test_vllm_backend_maps_sampling_chat_template_and_finish_reason(monkeypatch, tiny_model):
    """The adapter's side of the vLLM API, against a stand-in module that records its calls (vLLM itself needs a
    GPU and is exercised only by benchmarks/synthesis_batched_vs_sequential.py --vllm)."""
    import sys
    import types

    from transformers import AutoTokenizer

    from codepmp.models import chat_prompt

    calls = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs

        def get_tokenizer(self):
            return AutoTokenizer.from_pretrained(tiny_model)

        def generate(self, texts, params, use_tqdm):
            calls["texts"], calls["params"] = texts, [p.kwargs for p in params]
            output = types.SimpleNamespace
            return [output(outputs=[output(text=f" answer {i} ", finish_reason=reason, token_ids=[1] * (i + 2))])
                    for i, reason in enumerate(("stop", "length"))]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    from codepmp.generate.vllm_backend import VLLMBackend

    backend = VLLMBackend(tiny_model, tensor_parallel_size=4)
    done = backend.complete(["a", "b"], Sampling(max_new_tokens=9, temperature=0.7, seed=5, stop=("###",)))
    assert calls["llm"]["tensor_parallel_size"] == 4 and calls["llm"]["model"] == tiny_model
    template = AutoTokenizer.from_pretrained(tiny_model)
    assert calls["texts"] == [chat_prompt(template, "a"), chat_prompt(template, "b")] and "<|user|>" in calls["texts"][0]
    assert [p["seed"] for p in calls["params"]] == [5, 6]
    assert calls["params"][0] | {"seed": 0} == {"n": 1, "temperature": 0.7, "top_p": 1.0, "max_tokens": 9,
                                                "seed": 0, "stop": ["###"]}
    assert done == [Completion("answer 0", True, 2), Completion("answer 1", False, 3)]
