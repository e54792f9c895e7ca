"""GGUF models through llama.cpp (the optional `llamacpp` extra: llama-cpp-python), for CPU machines.

llama.cpp runs the quantized weights as they ship (Q4_K_M), where the transformers backend needs them
dequantized to fp32: on 2 CPU cores that is what makes a 1.5B policy affordable (benchmarks/README.md,
"Policy sampling"). One prompt at a time: llama.cpp keeps the KV cache of the previous prompt, so the k copies
of one problem's prompt that `sampled.sample_solutions` sends in a row are prefilled once.
"""

from __future__ import annotations

import atexit
import os

from codepmp.errors import InputError
from codepmp.progress import progress
from codepmp.generate.backend import Backend, Completion, Sampling


class LlamaCppBackend(Backend):
    def __init__(self, model_spec: str, n_ctx: int = 2048, threads: int = 0):
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise InputError("backend 'llamacpp' needs llama-cpp-python: pip install -e '.[llamacpp]'") from exc
        from codepmp.models import gguf_file

        self.model_spec = model_spec
        self.llm = Llama(model_path=str(gguf_file(model_spec)), n_ctx=n_ctx, n_threads=threads or os.cpu_count(),
                         verbose=False)
        # Freed before interpreter shutdown: llama-cpp-python's own finalizer fails once module globals are gone.
        atexit.register(self.llm.close)

    def complete(self, prompts: list[str], sampling: Sampling, desc: str = "generate") -> list[Completion]:
        out = []
        for i, prompt in enumerate(progress(prompts, desc=f"{desc} ({self.model_spec}, llama.cpp)", unit="prompt")):
            # Plain temperature sampling, as the transformers backend does: llama.cpp's default top-k 40 and
            # min-p 0.05 would otherwise cut the tail that makes samples of one prompt differ.
            answer = self.llm.create_chat_completion(
                messages=[{"role": "user", "content": prompt}], max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, min_p=0.0, repeat_penalty=1.0,
                seed=sampling.seed + i, stop=list(sampling.stop) or None)
            choice = answer["choices"][0]
            out.append(Completion((choice["message"]["content"] or "").strip(),
                                  finished=choice["finish_reason"] != "length",
                                  tokens=answer["usage"]["completion_tokens"]))
        return out
