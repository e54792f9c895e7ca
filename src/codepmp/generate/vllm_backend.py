"""vLLM offline generation for GPU node pools: `vllm.LLM(...).generate` over all prompts at once.

    cfg: synthesize.backend=vllm, synthesize.tensor_parallel_size=<GPUs of the pod>    # gpu image only

vLLM batches continuously across prompts, so the whole chunk goes in one call. Prompts get the model's chat
template here (as in the transformers backend), and each prompt gets its own sampling seed, so a prompt's
completion does not depend on which other prompts share the call: a resumed chunk regenerates the same text.
vllm is imported when the backend is built, never at module import: the CPU image does not install it.
"""

from __future__ import annotations

from codepmp.errors import ConfigError, InputError
from codepmp.models import chat_prompt, resolve
from codepmp.generate.backend import Backend, Completion, Sampling


class VLLMBackend(Backend):
    def __init__(self, model_spec: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None):
        try:
            import vllm
        except ImportError:
            raise ConfigError("synthesize.backend is 'vllm' but vllm is not installed: use the gpu image "
                              "(images/gpu) or backend 'transformers' / 'openai'") from None
        self.vllm, self.model_spec = vllm, model_spec
        try:
            self.llm = vllm.LLM(model=resolve(model_spec), tensor_parallel_size=tensor_parallel_size,
                                gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                                dtype="auto", trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"generation model '{model_spec}' cannot be loaded by vLLM: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                             ) from exc
        self.tokenizer = self.llm.get_tokenizer()

    def __repr__(self) -> str:
        return f"VLLMBackend({self.model_spec!r})"

    def complete(self, prompts: list[str], sampling: Sampling, desc: str = "generate") -> list[Completion]:
        params = [self.vllm.SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                                           max_tokens=sampling.max_new_tokens, seed=sampling.seed + i,
                                           stop=list(sampling.stop) or None)
                  for i in range(len(prompts))]
        texts = [chat_prompt(self.tokenizer, p) for p in prompts]
        results = self.llm.generate(texts, params, use_tqdm=True)
        # vLLM leaves a matched stop string out of the text itself.
        return [Completion(r.outputs[0].text.strip(), finished=r.outputs[0].finish_reason != "length",
                           tokens=len(r.outputs[0].token_ids)) for r in results]
