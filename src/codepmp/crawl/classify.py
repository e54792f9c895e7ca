"""Engineering vs non-engineering code labels from a small LM: one forward pass, no generation.

    from codepmp.crawl.classify import CodeClassifier
    clf = CodeClassifier(cfg.classify)
    labels = clf.classify(texts, ["python"] * len(texts))   # [("engineering", 0.57), ("other", 0.21), ...]

CodePMP labels every crawled file as engineering code (part of a real software project) or not before
synthesis so that synthesis can subsample by it. Each file's head is shown to an instruct LM with a yes/no
question; the probability mass the model puts on "yes" against "no" as its next token is the score. Reading
one next-token distribution instead of generating keeps the cost at one batched forward pass per batch and
gives a graded score that the threshold (and later subsampling) can use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from codepmp.errors import ConfigError, InputError
from codepmp.models import chat_prompt, load_for_inference, position_ids

if TYPE_CHECKING:
    from codepmp.config import ClassifyConfig

ENGINEERING = "engineering"
OTHER = "other"

PROMPT = """Classify a {language} file. Engineering code is part of a real software project: library, \
application, service or tooling code. Non-engineering code is an exercise, tutorial, homework, \
competitive-programming snippet, throwaway script, auto-generated file or data file.

```{language}
{code}
```

Is this professional production code from a real software project? Answer yes or no."""
"""Definitions first, file in a fenced block, question last: a 135M-parameter model reads mostly the end of
its prompt, so the yes/no answer format must be the last thing it sees, and the fence shows where the file
starts and ends. Both classes are spelled out with concrete kinds of files because the bare word
"engineering" means little to a small model, and for the same reason the final question asks about
"professional production code from a real software project" rather than "engineering code": on hand-written
engineering and non-engineering files, SmolLM2-135M-Instruct separated them best with this wording (asking
"is this engineering code?" or inverting the question to "is this an exercise?" separated them less or not
at all, and dropping the definitions left a weaker gap). The model leans towards "no" here, so engineering
files score roughly 0.45-0.6 and others 0.2-0.45; tune `threshold` on labelled files of the target crawl."""

YES_WORDS = ("yes", "Yes", " yes", " Yes")
NO_WORDS = ("no", "No", " no", " No")

DEFAULT_LANGUAGE = "source"


def _answer_ids(tokenizer, words: Sequence[str], other_words: Sequence[str]) -> list[int]:
    """Token ids whose probability counts as this answer.

    The spellings that are one token are read directly. A vocabulary without any (character-level or tiny
    tokenizers) falls back to each spelling's first token, the model's first step towards writing it, minus
    first tokens the other answer shares (" yes" and " no" may both start with a bare space).
    """
    encoded = [tokenizer.encode(word, add_special_tokens=False) for word in words]
    single = {ids[0] for ids in encoded if len(ids) == 1}
    if single:
        return sorted(single)
    other_first = {ids[0] for ids in (tokenizer.encode(w, add_special_tokens=False) for w in other_words) if ids}
    return sorted({ids[0] for ids in encoded if ids} - other_first)


class CodeClassifier:
    """Scores files as engineering code with P(yes) / (P(yes) + P(no)) from a causal LM's next token.

    Runs in bf16 on a GPU when there is one, else in fp32 on the CPU (see `codepmp.models.load_for_inference`).
    """

    def __init__(self, cfg: ClassifyConfig, prompt: str = PROMPT):
        if cfg.batch_size < 1:
            raise ConfigError(f"classify.batch_size must be at least 1, got {cfg.batch_size}")
        if cfg.max_chars < 1:
            raise ConfigError(f"classify.max_chars must be at least 1, got {cfg.max_chars}")
        self.cfg = cfg
        self.prompt = prompt
        self.model, self.tokenizer, self.device = load_for_inference(cfg.model, "classifier model")
        self.yes_ids = _answer_ids(self.tokenizer, YES_WORDS, NO_WORDS)
        self.no_ids = _answer_ids(self.tokenizer, NO_WORDS, YES_WORDS)
        if not self.yes_ids or not self.no_ids:
            raise InputError(f"classifier model '{cfg.model}' has no tokens that tell 'yes' from 'no'")
        self.max_tokens = getattr(self.model.config, "max_position_embeddings", None) or 2048

    def format(self, code: str, language: str) -> str:
        """The full model input for one file: the question, through the chat template when the model has one."""
        question = self.prompt.format(language=language, code=code[: self.cfg.max_chars])
        return chat_prompt(self.tokenizer, question, plain_suffix="\nAnswer:")

    def _encode(self, code: str, language: str) -> list[int]:
        """Token ids of one prompt, shortening the excerpt until it fits the model's context window.

        `max_chars` is in characters, so a tokenizer with a small vocabulary (or a model with a short
        context) can still overflow; cutting the code keeps the question intact.
        """
        add_special = not self.tokenizer.chat_template
        excerpt = code[: self.cfg.max_chars]
        while True:
            ids = self.tokenizer(self.format(excerpt, language), add_special_tokens=add_special)["input_ids"]
            if len(ids) <= self.max_tokens or not excerpt:
                return ids[-self.max_tokens:]
            excerpt = excerpt[: int(len(excerpt) * self.max_tokens / len(ids) * 0.9)]

    def _batch(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Left-pad so every row's last real token sits at the final position, with positions counted from it.

        Explicit position ids make a file's score independent of how much padding its batch needed.
        """
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device),
                "position_ids": position_ids(mask).to(self.device)}

    def _yes_probability(self, rows: list[list[int]]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) per row; `logits_to_keep=1` skips the vocabulary projection of the prompt."""
        logits = self.model(**self._batch(rows), logits_to_keep=1).logits[:, -1, :].float()
        probs = torch.softmax(logits, dim=-1)
        yes = probs[:, self.yes_ids].sum(-1)
        no = probs[:, self.no_ids].sum(-1)
        return (yes / (yes + no).clamp(min=torch.finfo(probs.dtype).tiny)).tolist()

    @torch.inference_mode()
    def classify(self, texts: Sequence[str], languages: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """Label each file ("engineering" | "other", P(engineering)), in input order.

        Prompts are batched by token length so a batch pads little; the order is restored afterwards.
        """
        if languages is None:
            languages = [DEFAULT_LANGUAGE] * len(texts)
        if len(languages) != len(texts):
            raise InputError(f"classify got {len(texts)} texts but {len(languages)} languages")
        rows = [self._encode(text, language or DEFAULT_LANGUAGE) for text, language in zip(texts, languages)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        scores = [0.0] * len(rows)
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size]
            for i, p in zip(idx, self._yes_probability([rows[i] for i in idx])):
                scores[i] = p
        return [(ENGINEERING if p >= self.cfg.threshold else OTHER, p) for p in scores]
