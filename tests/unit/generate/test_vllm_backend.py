"""The vLLM backend without vLLM installed (a clear error) and its mapping of sampling and chat templates."""

import pytest

from codepmp.generate.backend import Completion, Sampling


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
