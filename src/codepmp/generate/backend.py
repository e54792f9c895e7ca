"""Text generation backends. One interface: `generate(prompts, sampling) -> texts` (same order as prompts), and
`complete(prompts, sampling) -> Completion`s when the caller also needs to know whether each text finished.

The transformers backend decodes length-sorted prompts in batches with continuous batching (refill.py): a row
that finishes is replaced by the next prompt at once. Models with sliding-window layers fall back to static
left-padded batches through `generate`. Batching is what makes CPU synthesis affordable (benchmarks/README.md,
"Synthesis"). The others: `OpenAIBackend` (http_backend.py) and `VLLMBackend` (vllm_backend.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import TopPLogitsWarper

from codepmp.models import chat_prompt, load_for_inference, position_ids
from codepmp.progress import progress
from codepmp.generate.refill import RefillDecoder, copy_rows, prefix_cache, supports_refill

MIN_SHARED_PREFIX = 16
"""Shortest common prefix worth a separate prefill (below it the extra forward costs more than it saves)."""


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    """Strings that end a completion (left out of the text), besides the model's end-of-turn tokens."""


@dataclass
class Completion:
    text: str
    finished: bool = True
    """False when the completion was cut by `max_new_tokens` rather than ended by the model or a stop string."""
    tokens: int = 0
    """Generated tokens (up to the end of turn or stop string)."""


class Backend:
    """Base of every backend: subclasses implement `complete`."""

    def complete(self, prompts: list[str], sampling: Sampling, desc: str = "generate") -> list[Completion]:
        raise NotImplementedError

    @property
    def decoding(self) -> str:
        """How rows are decoded, for provenance records (sampled texts depend on it as well as on the seed)."""
        return type(self).__name__

    def generate(self, prompts: list[str], sampling: Sampling, desc: str = "generate") -> list[str]:
        return [c.text for c in self.complete(prompts, sampling, desc)]


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to its first stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


class TransformersBackend(Backend):
    def __init__(self, model_spec: str, batch_size: int = 16):
        self.model_spec = model_spec
        self.batch_size = batch_size
        self.model, self.tokenizer, self.device = load_for_inference(model_spec, "generation model")
        self.refill = supports_refill(self.model)
        """Continuous batching (refill.py); False for models with sliding-window layers (static batches)."""

    @property
    def decoding(self) -> str:
        """How rows are decoded, for provenance records."""
        return (f"continuous batching of {self.batch_size} rows (codepmp.generate.refill)" if self.refill else
                f"static batches of {self.batch_size} rows (transformers generate)")

    def format(self, prompt: str) -> str:
        """Wrap a prompt in the model's chat template when it has one (instruct models), else use it raw."""
        return chat_prompt(self.tokenizer, prompt)

    @torch.inference_mode()
    def complete(self, prompts: list[str], sampling: Sampling, desc: str = "generate") -> list[Completion]:
        ids = self.tokenizer([self.format(p) for p in prompts],
                             add_special_tokens=not self.tokenizer.chat_template)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        eos = list({self.tokenizer.eos_token_id, *_as_list(self.model.generation_config.eos_token_id)} - {None})
        run = self._refill if self.refill else self._static
        return run(ids, order, eos, sampling, f"{desc} ({self.model_spec})")

    def _refill(self, ids: list[list[int]], order: list[int], eos: list[int], sampling: Sampling,
                desc: str) -> list[Completion]:
        shared = _common_prefix([ids[i] for i in order]) if len(ids) > 1 else 0
        prefix = prefix_cache(self.model, ids[order[0]][:shared], self.device) if shared >= MIN_SHARED_PREFIX else None
        shared = shared if prefix is not None else 0

        def prefill(rows: list[list[int]]):
            # k samples of one problem are k equal prompts: each distinct one is run once, then its rows copied.
            distinct = {row: n for n, row in enumerate(dict.fromkeys(map(tuple, rows)))}
            if len(distinct) < len(rows):
                cache, mask, logits = prefill([list(row) for row in distinct])
                index = torch.tensor([distinct[tuple(row)] for row in rows], device=self.device)
                cache.batch_select_indices(index)
                return cache, mask[index], logits[index]
            inputs = self._layout(rows, shared)
            cache = copy_rows(prefix, len(rows)) if prefix is not None else DynamicCache(config=self.model.config)
            mask = inputs["attention_mask"]
            logits = self.model(input_ids=inputs["input_ids"][:, shared:], attention_mask=mask,
                                position_ids=position_ids(mask)[:, shared:], cache=cache, use_cache=True,
                                logits_to_keep=1).logits[:, -1]
            return cache, mask, logits

        ends, longest_stop = set(eos), max((len(s) for s in sampling.stop), default=0)

        def done(tokens: list[int]) -> bool:
            if tokens[-1] in ends or len(tokens) >= sampling.max_new_tokens:
                return True
            # A stop string is at most longest_stop characters, so a short tail of tokens holds it when it lands.
            return bool(longest_stop) and cut_at_stop(
                self.tokenizer.decode(tokens[-2 * longest_stop - 4:], skip_special_tokens=True), sampling.stop)[1]

        generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        decoder = RefillDecoder(self.model, self.batch_size, prefill,
                                functools.partial(pick_next, sampling, generator), done)
        outputs: list[Completion] = [Completion("")] * len(ids)
        for index, tokens in progress(decoder.run(ids, order), desc=desc, total=len(ids), unit="prompt"):
            outputs[index] = self._completion(tokens, eos, sampling)
        return outputs

    def _static(self, ids: list[list[int]], order: list[int], eos: list[int], sampling: Sampling,
                desc: str) -> list[Completion]:
        outputs: list[Completion] = [Completion("")] * len(ids)
        stop = {"stop_strings": list(sampling.stop), "tokenizer": self.tokenizer} if sampling.stop else {}
        for start in progress(range(0, len(order), self.batch_size), desc=desc, unit="batch"):
            idx = order[start:start + self.batch_size]
            inputs = self._batch([ids[i] for i in idx], sampling.max_new_tokens)
            torch.manual_seed(sampling.seed + start)
            sample = sampling.temperature > 0
            out = self.model.generate(
                **inputs, max_new_tokens=sampling.max_new_tokens, do_sample=sample,
                temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample and sampling.top_p < 1.0 else None,
                top_k=None, eos_token_id=eos, pad_token_id=self.tokenizer.pad_token_id, **stop)
            new_tokens = out[:, inputs["input_ids"].shape[1]:].tolist()
            for i, row in zip(idx, new_tokens):
                outputs[i] = self._completion(row, eos, sampling)
        return outputs

    def _layout(self, rows: list[list[int]], shared: int) -> dict:
        """Token rows as one right-aligned block: left-padded, or, when the rows share their first `shared`
        tokens, that prefix first and the padding between it and the rest, where the attention mask hides it and
        position ids (counted over unmasked tokens) stay those of the unpadded row."""
        pad, width = self.tokenizer.pad_token_id, max(len(r) for r in rows)
        as_tensor = functools.partial(torch.tensor, dtype=torch.long, device=self.device)
        gap = [width - len(r) for r in rows]
        return {"input_ids": as_tensor([r[:shared] + [pad] * g + r[shared:] for r, g in zip(rows, gap)]),
                "attention_mask": as_tensor([[1] * shared + [0] * g + [1] * (len(r) - shared)
                                             for r, g in zip(rows, gap)])}

    def _batch(self, rows: list[list[int]], max_new_tokens: int) -> dict:
        """generate() inputs for token rows. Rows that open with the same tokens (the paper's prompts all
        do: chat template and instruction, 70+ tokens) share one prefill of that prefix: its KV cache is
        computed once and copied to every row (`_layout`). About 9 % less time per batch of description prompts
        on CPU, identical greedy outputs. Otherwise rows are left-padded."""
        width = max(len(r) for r in rows)
        shared = _common_prefix(rows) if len(rows) > 1 and self._can_share(width + max_new_tokens) else 0
        if shared < MIN_SHARED_PREFIX:
            return self._layout(rows, 0)
        cache = prefix_cache(self.model, rows[0][:shared], self.device)
        cache.batch_repeat_interleave(len(rows))
        return {**self._layout(rows, shared), "cache": cache}

    def _can_share(self, length: int) -> bool:
        # Once a sequence outgrows a sliding attention window, padding inside the window would push real
        # tokens out of it; left padding never does.
        window = getattr(self.model.config.get_text_config(), "sliding_window", None)
        return not window or length <= window

    def _completion(self, row: list[int], eos: list[int], sampling: Sampling) -> Completion:
        # A finished row ends at its first end-of-turn token; what follows is padding.
        end = next((n for n, token in enumerate(row) if token in eos), None)
        tokens = row if end is None else row[:end]
        text, stopped = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), sampling.stop)
        return Completion(text.strip(), finished=end is not None or stopped, tokens=len(tokens))


def pick_next(sampling: Sampling, generator: torch.Generator, logits: torch.Tensor) -> torch.Tensor:
    """Next token of every row: the argmax at temperature 0, else a draw from the tempered (top-p) distribution
    by inverting its CDF with one uniform number per row, far cheaper on CPU than `torch.multinomial`'s one
    exponential per vocabulary entry."""
    if sampling.temperature <= 0:
        return logits.argmax(-1)
    scores = logits.float() / sampling.temperature
    if sampling.top_p < 1.0:
        scores = TopPLogitsWarper(sampling.top_p)(None, scores)
    cdf = scores.softmax(-1).cumsum(-1)
    draw = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, draw, right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)


def _common_prefix(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own (the prefill's last
    position is what the first new token is sampled from)."""
    shortest = min(len(r) for r in rows)
    n = 0
    while n < shortest - 1 and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
