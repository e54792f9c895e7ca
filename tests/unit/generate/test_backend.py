"""The transformers backend: batched and continuously batched generation equal to transformers' `generate`
one prompt at a time, sampling from the tempered top-p distribution, seeds and stop strings."""

import pytest

from codepmp.generate.backend import Sampling, TransformersBackend
from codepmp.models import cache_dir
from codepmp.synthesize.prompts import description_prompt
from codepmp.testing import write_tiny_model


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


def test_stop_strings_end_a_completion(tiny_model):
    backend = TransformersBackend(tiny_model, batch_size=2)
    prompts = ["def add(a, b):", "class Stack:"]
    free = backend.complete(prompts, Sampling(max_new_tokens=12, temperature=0.0))
    assert all(not c.finished and c.tokens == 12 for c in free)  # a random model never says end of turn
    stop = free[0].text[4:7]
    cut = backend.complete(prompts, Sampling(max_new_tokens=12, temperature=0.0, stop=(stop,)))
    assert cut[0].finished and cut[0].text == free[0].text[:free[0].text.find(stop)].strip()
    assert cut[0].tokens < 12
