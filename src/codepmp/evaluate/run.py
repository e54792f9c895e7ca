"""Evaluate reward models side by side (PMP vs control) on the reasoning data stage's tables.

Every text is scored once per model (dev pairs, best-of-N candidates, logic options) and the scores are reused:
pairwise accuracy per domain and over all dev pairs, best-of-N curves for every N from the same candidate
scores, option accuracy for logic. Each metric has a bootstrap 95 % interval, and the PMP-minus-control
difference a paired one. `evaluate_models` returns the report's results dict and flat metrics per model.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections import defaultdict
from pathlib import Path

import torch

from codepmp.config import EvaluateConfig
from codepmp.evaluate.html import best_of_n_entry, metric_entry
from codepmp.evaluate.metrics import best_of_n_curves, option_correct, pairwise_correct
from codepmp.models import load_reward_model
from codepmp.progress import progress
from codepmp.synthesize.backend import MIN_SHARED_PREFIX, _common_prefix
from codepmp.reasoning.build import read_table
from codepmp.train.data import encode, pad_right

ALL = "all"
"""The pseudo-domain of every dev pair together: what the promotion gate reads by default."""


class Scorer:
    """A reward model loaded once; scores (prompt, response) texts with the transformers sequence-classification
    model's own backbone and score head (on the GPU when there is one).

    Texts that share a prompt (a problem's best-of-N candidates, a dev pair, a logic item's options) share
    the forward pass of the tokens they start with: its KV cache is computed once and extended, like a prefix
    tree, over longer starts that some of them share (candidates that agree on the first steps of a
    solution), and each text's own tokens then run in batches on top of it. So a LogiQA passage or a GSM8K
    question is encoded once per model, not once per candidate. Other texts go in length-sorted,
    right-padded batches. Both give the rewards of scoring every text alone (up to float rounding; tested)."""

    def __init__(self, model_dir: str, batch_size: int, max_length: int, loaded=None, share_prompts: bool = True):
        self.model, self.tokenizer = loaded or load_reward_model(model_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_size, self.max_length, self.name = batch_size, max_length, Path(model_dir).name
        window = getattr(self.model.config.get_text_config(), "sliding_window", None)
        # Right padding inside a sliding window would shift what a token sees: share only without one.
        self.share_prompts = share_prompts and not window
        # transformers 5.2x renamed the decoder's `past_key_values` argument to `cache` (the old name warns).
        self._cache_arg = ("cache" if "cache" in inspect.signature(self._backbone.forward).parameters
                           else "past_key_values")

    @torch.inference_mode()
    def __call__(self, texts: list[tuple[str, str]], desc: str = "score") -> list[float]:
        encoded = [encode(self.tokenizer, p, r, self.max_length).ids for p, r in texts]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, (prompt, _) in enumerate(texts):
            groups[prompt if self.share_prompts else str(i)].append(i)
        trees, alone = [], []
        for members in groups.values():
            shares = len(members) > 1 and _common_prefix([encoded[i] for i in members]) >= MIN_SHARED_PREFIX
            (trees.append(members) if shares else alone.extend(members))
        work = [("batch", chunk) for chunk in _chunks(sorted(alone, key=lambda i: len(encoded[i])), self.batch_size)]
        work += [("tree", members) for members in trees]
        scores = [0.0] * len(encoded)
        for kind, members in progress(work, desc=desc, unit="group"):
            if kind == "batch":
                for i, value in zip(members, self._forward([encoded[i] for i in members], 0, None)):
                    scores[i] = value
            else:
                self._score_tree(members, encoded, 0, None, scores)
        return scores

    def _score_tree(self, members: list[int], encoded: list[list[int]], start: int, cache, scores: list[float]):
        """Score `members`, whose first `start` tokens are in `cache` (one row; None for start 0): extend it over
        the tokens all of them share, recurse into subgroups sharing MIN_SHARED_PREFIX more, and score the rest
        in batches on top of the extended cache."""
        prefix = _common_prefix([encoded[i] for i in members])
        cache = self._extend(cache, encoded[members[0]][start:prefix], start)
        branches: dict[int, list[int]] = defaultdict(list)
        for i in members:
            branches[encoded[i][prefix]].append(i)
        leaves = []
        for branch in branches.values():
            deeper = len(branch) > 1 and _common_prefix([encoded[i] for i in branch]) - prefix >= MIN_SHARED_PREFIX
            (self._score_tree(branch, encoded, prefix, cache, scores) if deeper else leaves.extend(branch))
        for chunk in _chunks(leaves, self.batch_size):
            batch_cache = copy.deepcopy(cache)
            batch_cache.batch_repeat_interleave(len(chunk))
            for i, value in zip(chunk, self._forward([encoded[i] for i in chunk], prefix, batch_cache)):
                scores[i] = value

    def _extend(self, cache, tokens: list[int], start: int):
        """A new one-row cache: `cache` (the first `start` tokens; None for none) plus `tokens`."""
        if not tokens:
            return cache
        extra = {self._cache_arg: copy.deepcopy(cache)} if cache is not None else {}
        positions = torch.arange(start, start + len(tokens), device=self.device)[None]
        out = self._backbone(input_ids=torch.tensor([tokens], device=self.device), position_ids=positions,
                             use_cache=True, **extra)
        return getattr(out, "cache", None) or out.past_key_values


    @property
    def _backbone(self):
        return getattr(self.model, self.model.base_model_prefix)

    def _forward(self, rows: list[list[int]], prefix: int, cache) -> list[float]:
        """Rewards of token rows whose first `prefix` tokens are in `cache` (prefix 0: no cache)."""
        ids, mask = pad_right([r[prefix:] for r in rows], self.tokenizer.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        extra = {}
        if prefix:
            extra = {self._cache_arg: cache, "use_cache": True,
                     "position_ids": torch.arange(prefix, prefix + ids.size(1), device=self.device).expand_as(ids)}
            mask = torch.cat([torch.ones(len(rows), prefix, dtype=mask.dtype, device=self.device), mask], dim=1)
        hidden = self._backbone(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
        last = torch.tensor([len(r) - prefix - 1 for r in rows], device=self.device)
        pooled = hidden[torch.arange(len(rows), device=self.device), last]
        return self.model.score(pooled).squeeze(-1).float().tolist()


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def score(model_dir: str, texts: list[tuple[str, str]], batch_size: int, max_length: int,
          desc: str = "score") -> list[float]:
    """Reward of each (prompt, response) under `model_dir` (loads the model for this call)."""
    return Scorer(model_dir, batch_size, max_length)(texts, desc)


def dev_pairwise_correct(cfg: EvaluateConfig, model_dir: str, dev: list[dict]) -> list[float]:
    """1/0 per dev pair row (prompt, chosen, rejected): whether `model_dir` ranks the chosen side higher."""
    texts = [(r["prompt"], r["chosen"]) for r in dev] + [(r["prompt"], r["rejected"]) for r in dev]
    scores = score(model_dir, texts, cfg.batch_size, cfg.max_length, desc=f"score {Path(model_dir).name}")
    return pairwise_correct(scores[:len(dev)], scores[len(dev):])


def _model_scores(scorer: Scorer, dev: list[dict], pool: list[dict], logic: list[dict]) -> dict:
    """Per-item values of one model: dev-pair correctness by domain, candidate scores, logic correctness."""
    texts = ([(r["prompt"], r["chosen"]) for r in dev] + [(r["prompt"], r["rejected"]) for r in dev]
             + [(r["prompt"], r["response"]) for r in pool] + [(r["prompt"], r["response"]) for r in logic])
    scores = scorer(texts, desc=f"score {scorer.name} ({len(texts)} texts)")
    n, m = len(dev), len(pool)
    correct = pairwise_correct(scores[:n], scores[n:2 * n])
    pairwise = defaultdict(list)
    for row, value in zip(dev, correct):
        pairwise[row["domain"]].append(value)
        pairwise[ALL].append(value)
    options: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    gold: dict[str, dict[str, int]] = defaultdict(dict)
    for row, value in zip(logic, scores[2 * n + m:]):
        options[row["domain"]][row["item_id"]].append((row["option"], value))
        gold[row["domain"]][row["item_id"]] = row["gold"]
    option_values = {domain: option_correct([[v for _, v in sorted(opts)] for opts in items.values()],
                                            [gold[domain][item] for item in items])
                     for domain, items in options.items()}
    return {"pairwise": dict(pairwise), "pool": scores[2 * n:2 * n + m], "options": option_values}


def evaluate_models(cfg: EvaluateConfig, models: dict[str, str], data_dir: str | Path, seed: int = 0) -> dict:
    """Score every model on the data folder; returns {"domains": report parts, "metrics": {model: {flat}},
    "differences": {flat, first model minus second}, "scoring": {texts, seconds, texts_per_s}}."""
    dev, pool, logic = (read_table(data_dir, name) for name in ("dev", "pool", "logic"))
    start, per_model = time.perf_counter(), {}
    for name, model_dir in models.items():
        per_model[name] = _model_scores(Scorer(model_dir, cfg.batch_size, cfg.max_length), dev, pool, logic)
    seconds = time.perf_counter() - start
    texts = len(models) * (2 * len(dev) + len(pool) + len(logic))
    domains: dict[str, dict] = {}
    flat: dict[str, dict[str, float]] = {name: {} for name in models}
    differences: dict[str, float] = {}

    def add(domain: str, metric: str, per_item: dict[str, list[float]]) -> None:
        entry = metric_entry(per_item, cfg.bootstrap_resamples, seed)
        domains.setdefault(domain, {}).setdefault("metrics", {})[metric] = entry
        key = metric if domain == ALL else f"{domain}.{metric}"
        for name, stats in [*entry["models"].items(), ("diff", entry.get("difference"))]:
            if stats:
                (differences if name == "diff" else flat[name]).update(
                    {key: stats["mean"], f"{key}_ci_low": stats["low"], f"{key}_ci_high": stats["high"]})

    for domain in per_model[next(iter(models))]["pairwise"]:
        add(domain, "pairwise_accuracy", {name: s["pairwise"][domain] for name, s in per_model.items()})
    for domain in per_model[next(iter(models))]["options"]:
        add(domain, "option_accuracy", {name: s["options"][domain] for name, s in per_model.items()})
    for domain in sorted({row["domain"] for row in pool}):
        rows = [i for i, row in enumerate(pool) if row["domain"] == domain]
        curves = {name: best_of_n_curves([pool[i] for i in rows], [s["pool"][i] for i in rows], cfg.best_of_n,
                                         cfg.bon_trials, seed, cfg.bootstrap_resamples)
                  for name, s in per_model.items()}
        domains.setdefault(domain, {})["best_of_n"] = best_of_n_entry(curves)
        for name, result in curves.items():
            for strategy, curve in result["strategies"].items():
                flat[name].update({f"{domain}.bon{n}_{strategy}": value for n, value in zip(result["n"], curve["mean"])})
    return {"domains": domains, "metrics": flat, "differences": differences,
            "scoring": {"texts": texts, "seconds": round(seconds, 2), "texts_per_s": round(texts / seconds, 2)}}
