"""Evaluate reward models side by side (PMP vs control) on the reasoning data stage's tables.

Every text is scored once per model (dev pairs, best-of-N candidates, logic options) and the scores are reused:
pairwise accuracy per domain and over all dev pairs, best-of-N curves for every N from the same candidate
scores, option accuracy for logic. Each metric has a bootstrap 95 % interval, and the PMP-minus-control
difference a paired one. `evaluate_models` returns the report's results dict and flat metrics per model.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from codepmp.config import EvaluateConfig
from codepmp.evaluate.html import best_of_n_entry, metric_entry
from codepmp.evaluate.metrics import best_of_n_curves, option_correct, pairwise_correct
from codepmp.models import load_reward_model
from codepmp.progress import progress
from codepmp.reasoning.build import read_table
from codepmp.train.data import encode, pad_right

ALL = "all"
"""The pseudo-domain of every dev pair together: what the promotion gate reads by default."""


class Scorer:
    """A reward model loaded once; scores (prompt, response) texts with the transformers sequence-classification
    model's own backbone and score head (on the GPU when there is one).

    Texts are scored as a token trie: the texts' distinct token rows are sorted, and each row adds only the
    tokens after what it shares with the row before it. A trie's nodes run as one sequence per forward pass
    (at most `pack_tokens` of them) with tree attention: every node sees exactly its ancestors, at its own
    depth as position. So a LogiQA passage, a GSM8K question, the steps that several candidates agree on,
    and any text that comes more than once (a dev pair's chosen side is also a pool candidate and a logic
    option) each run once per model, in a few large forward passes: on a CPU each pass reads every weight
    once, so few large passes beat many small ones. Each text's reward is read at its own last node: the
    reward of scoring it alone (up to float rounding; tested). `share=False` is that baseline: one padded
    batch of `batch_size` texts per pass, nothing shared. Models with a sliding window, or an attention
    kernel that takes no custom mask, are scored that way too."""

    def __init__(self, model_dir: str, batch_size: int, max_length: int, loaded=None, share: bool = True,
                 pack_tokens: int = 1024):
        self.model, self.tokenizer = loaded or load_reward_model(model_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_size, self.max_length, self.name = batch_size, max_length, Path(model_dir).name
        self.pack_tokens = max(pack_tokens, max_length)
        config = self.model.config.get_text_config()
        # A sliding window would need its own limits in the tree mask, and flash kernels take no custom mask.
        self.share = (share and not getattr(config, "sliding_window", None)
                      and config._attn_implementation in ("sdpa", "eager"))
        self.tokens = self.tokens_run = 0
        """Tokens of the texts scored so far, and positions the model actually ran for them (padding included)."""

    @torch.inference_mode()
    def __call__(self, texts: list[tuple[str, str]], desc: str = "score") -> list[float]:
        encoded = [encode(self.tokenizer, p, r, self.max_length).ids for p, r in texts]
        self.tokens += sum(map(len, encoded))
        if not self.share:
            scores = [0.0] * len(encoded)
            order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
            for batch in progress(_chunks(order, self.batch_size), desc=desc, unit="pass"):
                for i, value in zip(batch, self._forward([encoded[i] for i in batch])):
                    scores[i] = value
            return scores
        first: dict[tuple[int, ...], int] = {}
        owner = [first.setdefault(tuple(ids), i) for i, ids in enumerate(encoded)]
        rows = {i: encoded[i] for i in first.values()}
        packs = sorted(trie_packs(rows, self.pack_tokens), key=lambda pack: len(pack.tokens))
        by_row: dict[int, float] = {}
        for batch in progress(_chunks(packs, self.batch_size), desc=desc, unit="pass"):
            by_row.update(self._forward_trees(batch))
        return [by_row[owner[i]] for i in range(len(encoded))]

    @classmethod
    def for_config(cls, cfg: EvaluateConfig, model_dir: str) -> "Scorer":
        return cls(model_dir, cfg.batch_size, cfg.max_length, pack_tokens=cfg.pack_tokens)

    @property
    def _backbone(self):
        return getattr(self.model, self.model.base_model_prefix)

    def _rewards(self, hidden: torch.Tensor) -> list[float]:
        return self.model.score(hidden).squeeze(-1).float().tolist()

    def _forward(self, rows: list[list[int]]) -> list[float]:
        """Rewards of right-padded token rows, one batch."""
        ids, mask = pad_right(rows, self.tokenizer.pad_token_id)
        self.tokens_run += ids.numel()
        hidden = self._backbone(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                use_cache=False).last_hidden_state
        last = torch.tensor([len(r) - 1 for r in rows], device=self.device)
        return self._rewards(hidden[torch.arange(len(rows), device=self.device), last])

    def _forward_trees(self, packs: list["TriePack"]) -> dict[int, float]:
        """Rewards of the rows whose paths `packs` hold (one right-padded batch row per pack), keyed like the rows
        given to `trie_packs`. Separate packs keep the attention (quadratic in a row's length) small."""
        width = max(len(pack.tokens) for pack in packs)
        self.tokens_run += len(packs) * width
        ids = torch.full((len(packs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        positions = torch.zeros_like(ids)
        dtype = self.model.dtype
        allowed = torch.eye(width, dtype=torch.bool).repeat(len(packs), 1, 1)  # padding sees itself only
        for b, pack in enumerate(packs):
            n = len(pack.tokens)
            ids[b, :n], positions[b, :n] = torch.tensor(pack.tokens), torch.tensor(pack.positions)
            allowed[b, :n, :n] = torch.from_numpy(pack.ancestry())
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        hidden = self._backbone(input_ids=ids.to(self.device), position_ids=positions.to(self.device),
                                attention_mask=mask[:, None].to(self.device), use_cache=False).last_hidden_state
        ends = [(b, row, node) for b, pack in enumerate(packs) for row, node in pack.ends.items()]
        index = torch.tensor([[b, node] for b, _, node in ends], device=self.device)
        rewards = self._rewards(hidden[index[:, 0], index[:, 1]])
        return {row: value for (_, row, _), value in zip(ends, rewards)}


@dataclass
class TriePack:
    """Part of a token trie laid out as one sequence in depth-first order: node tokens, their depths (the
    position each token has in its own text) and parents (-1 for a root), and each row's last node."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    ends: dict[int, int] = field(default_factory=dict)

    def ancestry(self) -> np.ndarray:
        """[n, n] bool: node i may attend to node j (j is i or one of its ancestors)."""
        n = len(self.tokens)
        seen = np.zeros((n, n), dtype=bool)
        for node, parent in enumerate(self.parents):
            if parent >= 0:
                seen[node, :parent + 1] = seen[parent, :parent + 1]  # depth-first order: ancestors come first
            seen[node, node] = True
        return seen


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def trie_packs(rows: dict[int, list[int]], pack_tokens: int) -> list[TriePack]:
    """The token trie of distinct `rows` (key: token row), cut into packs of at most `pack_tokens` nodes
    (each row at most that long). A row that does not fit starts a new pack, which holds its whole path
    again: the shared start is recomputed once per pack, never per row."""
    packs: list[TriePack] = []
    pack, previous, path = None, [], []
    for key in sorted(rows, key=lambda k: rows[k]):
        row = rows[key]
        shared = 0
        while shared < min(len(row), len(previous)) and row[shared] == previous[shared]:
            shared += 1
        if pack is None or len(pack.tokens) + len(row) - shared > pack_tokens:
            pack, shared = TriePack(), 0
            packs.append(pack)
        path = path[:shared]
        for depth in range(shared, len(row)):
            pack.parents.append(path[-1] if path else -1)
            path.append(len(pack.tokens))
            pack.tokens.append(row[depth])
            pack.positions.append(depth)
        pack.ends[key] = path[-1]
        previous = row
    return packs


def dev_pairwise_correct(cfg: EvaluateConfig, model_dir: str, dev: list[dict]) -> list[float]:
    """1/0 per dev pair row (prompt, chosen, rejected): whether `model_dir` ranks the chosen side higher."""
    texts = [(r["prompt"], r["chosen"]) for r in dev] + [(r["prompt"], r["rejected"]) for r in dev]
    scores = Scorer.for_config(cfg, model_dir)(texts, desc=f"score {Path(model_dir).name}")
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
        per_model[name] = _model_scores(Scorer.for_config(cfg, model_dir), dev, pool, logic)
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
