"""Evaluate reward models side by side (PMP vs control) on the reasoning data stage's tables.

Every text is scored once per model (dev pairs, best-of-N candidates, logic options) and the scores are reused:
pairwise accuracy per domain and pooled over domains, best-of-N curves for every N from the same candidate
scores, option accuracy for logic. Each metric has a cluster-bootstrap 95 % interval (a cluster: a math problem
or a logic item), and the PMP-minus-control difference a paired one. `evaluate_models` returns the report's
results dict and flat metrics per model.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from codepmp.config import EvaluateConfig
from codepmp.evaluate.html import best_of_n_entry, metric_entry
from codepmp.evaluate.metrics import best_of_n_compare, option_correct, pairwise_correct
from codepmp.models import load_reward_model
from codepmp.progress import progress
from codepmp.encoding import encode, pad_right, shared_prefix_length
from codepmp.pairs import MATH_DOMAINS, read_reasoning_table

ALL = "all"
"""The pseudo-domain of every dev pair together: what the promotion gate reads by default. Its metric is the
mean over domains of each domain's metric (each domain weighs 1/#domains, however many pairs it has)."""
PLUMBING_CHECK = "{what} are corrupted copies of the reference solution: a plumbing check, not a reward-model metric"
"""The warning put in results["meta"]["plumbing_check"] when dev pairs or pools come from the `corrupted` mode."""


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
        shared = shared_prefix_length(row, previous)
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


def dev_clusters(dev: list[dict]) -> list[str]:
    """The cluster of each dev pair row, the unit a bootstrap resamples: its `cluster` or `problem_id` column where
    the table has one, else its prompt (rows with the same prompt are the same math problem or logic item)."""
    return [next((str(row[k]) for k in ("cluster", "problem_id") if row.get(k) is not None), row["prompt"])
            for row in dev]


def data_sources(data_dir: str | Path) -> dict[str, str]:
    """How the reasoning data stage made the dev pairs and pools: stats.json's "sources" (absent: "corrupted",
    the only mode that data written before the key existed can have come from)."""
    path = Path(data_dir) / "stats.json"
    stats = json.loads(path.read_text()) if path.is_file() else {}
    sources = stats.get("sources") if isinstance(stats.get("sources"), dict) else {}
    return {table: str(sources.get(table) or "corrupted") for table in ("dev_pairs", "pool")}


def plumbing_check(dev_pairs: bool, pools: bool) -> str:
    """The report's warning line when the dev pairs and/or the pools that were evaluated are corrupted copies of
    the reference solution, else ""."""
    corrupted = [name for name, flag in (("dev pairs", dev_pairs), ("pools", pools)) if flag]
    return PLUMBING_CHECK.format(what="/".join(corrupted)) if corrupted else ""


def _model_scores(scorer: Scorer, dev: list[dict], pool: list[dict], logic: list[dict]) -> dict:
    """Per-item values of one model: dev-pair correctness (aligned with `dev`), candidate scores (aligned with
    `pool`), and per logic domain the correctness of each item (in order of first appearance)."""
    texts = ([(r["prompt"], r["chosen"]) for r in dev] + [(r["prompt"], r["rejected"]) for r in dev]
             + [(r["prompt"], r["response"]) for r in pool] + [(r["prompt"], r["response"]) for r in logic])
    scores = scorer(texts, desc=f"score {scorer.name} ({len(texts)} texts)")
    n, m = len(dev), len(pool)
    options: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    gold: dict[str, dict[str, int]] = defaultdict(dict)
    for row, value in zip(logic, scores[2 * n + m:]):
        options[row["domain"]][row["item_id"]].append((row["option"], value))
        gold[row["domain"]][row["item_id"]] = row["gold"]
    option_values = {domain: option_correct([[v for _, v in sorted(opts)] for opts in items.values()],
                                            [gold[domain][item] for item in items])
                     for domain, items in options.items()}
    return {"pairwise": pairwise_correct(scores[:n], scores[n:2 * n]), "pool": scores[2 * n:2 * n + m],
            "options": option_values}


def evaluate_models(cfg: EvaluateConfig, models: dict[str, str], data_dir: str | Path, seed: int | None = None) -> dict:
    """Score every model on the data folder; `seed` (default `cfg.seed`) seeds the best-of-N draws, the majority
    vote's tie breaks and every bootstrap.

    Returns {"domains": report parts, "metrics": {model: {flat}}, "differences": {flat, first model minus second},
    "meta": {report header entries, "plumbing_check" among them when it applies}, "sources": data_sources(...),
    "scoring": {texts, seconds, texts_per_s}}. Flat keys (those of the registry gate; `_ci_low`/`_ci_high` are
    the 95 % interval's ends):

    - `pairwise_accuracy` (+ `_ci_low`, `_ci_high`): over all dev pairs, the mean over domains of each domain's
      pairwise accuracy (every domain weighs 1/#domains), with a bootstrap that resamples clusters within each
      domain (stratified); before this it was the fraction over all pairs pooled, which the logic domains'
      three pairs per item dominated.
    - `<domain>.pairwise_accuracy`, `<domain>.option_accuracy` (+ intervals): the fraction of a domain's pairs /
      logic items ranked right, with a cluster bootstrap (a cluster: the pairs sharing a prompt; a logic item).
    - `<domain>.bon<N>_<strategy>` (+ intervals): best-of-N accuracy over problems (rm, majority, random,
      oracle), bootstrap over problems; majority, random and oracle read no scores and are the same per model.
    - In "differences", the same keys hold first model minus second with a paired bootstrap (the same clusters
      resampled for both), and `<domain>.bon<N>_rm` the rm strategy's difference on identical draws.
    """
    seed = cfg.seed if seed is None else seed
    dev, pool, logic = (read_reasoning_table(data_dir, name) for name in ("dev", "pool", "logic"))
    sources = data_sources(data_dir)
    # Only math dev pairs and pools can be corrupted copies; logic pairs are the dataset's own options.
    dev_plumbing = sources["dev_pairs"] == "corrupted" and any(r["domain"] in MATH_DOMAINS for r in dev)
    pool_plumbing = sources["pool"] == "corrupted" and bool(pool)
    start, per_model = time.perf_counter(), {}
    for name, model_dir in models.items():
        per_model[name] = _model_scores(Scorer.for_config(cfg, model_dir), dev, pool, logic)
    seconds = time.perf_counter() - start
    texts = len(models) * (2 * len(dev) + len(pool) + len(logic))
    domains: dict[str, dict] = {}
    flat: dict[str, dict[str, float]] = {name: {} for name in models}
    differences: dict[str, float] = {}

    def record(target: dict[str, float], key: str, stats: dict) -> None:
        target.update({key: stats["mean"], f"{key}_ci_low": stats["low"], f"{key}_ci_high": stats["high"]})

    def add(domain: str, metric: str, per_item: dict[str, list[float]], plumbing: bool = False, **labels) -> None:
        entry = metric_entry(per_item, cfg.bootstrap_resamples, seed, **labels)
        if plumbing:
            entry["plumbing_check"] = True
        domains.setdefault(domain, {}).setdefault("metrics", {})[metric] = entry
        key = metric if domain == ALL else f"{domain}.{metric}"
        for name, stats in entry["models"].items():
            record(flat[name], key, stats)
        if "difference" in entry:
            record(differences, key, entry["difference"])

    clusters, strata = dev_clusters(dev), [row["domain"] for row in dev]
    dev_domains = list(dict.fromkeys(strata))
    add(ALL, "pairwise_accuracy", {name: s["pairwise"] for name, s in per_model.items()}, dev_plumbing,
        clusters=clusters, strata=strata)
    for domain in dev_domains:
        rows = [i for i, d in enumerate(strata) if d == domain]
        add(domain, "pairwise_accuracy", {name: [s["pairwise"][i] for i in rows] for name, s in per_model.items()},
            dev_plumbing and domain in MATH_DOMAINS, clusters=[clusters[i] for i in rows])
    for domain in per_model[next(iter(models))]["options"]:
        add(domain, "option_accuracy", {name: s["options"][domain] for name, s in per_model.items()})
    for domain in sorted({row["domain"] for row in pool}):
        rows = [i for i, row in enumerate(pool) if row["domain"] == domain]
        compared = best_of_n_compare([pool[i] for i in rows], {name: [s["pool"][i] for i in rows]
                                                               for name, s in per_model.items()},
                                     cfg.best_of_n, cfg.bon_trials, seed, cfg.bootstrap_resamples)
        part = best_of_n_entry(compared["curves"], compared.get("difference"))
        if pool_plumbing:
            part["plumbing_check"] = True
        domains.setdefault(domain, {})["best_of_n"] = part
        for name, result in compared["curves"].items():
            for strategy, curve in result["strategies"].items():
                for i, n in enumerate(result["n"]):
                    record(flat[name], f"{domain}.bon{n}_{strategy}", {k: curve[k][i] for k in ("mean", "low", "high")})
        if "difference" in compared:
            diff = compared["difference"]
            for i, n in enumerate(compared["n"]):
                record(differences, f"{domain}.bon{n}_rm", {k: diff[k][i] for k in ("mean", "low", "high")})
    meta: dict = {"evaluation seed": seed}
    warning = plumbing_check(dev_plumbing, pool_plumbing)
    if warning:
        meta["plumbing_check"] = warning
    return {"domains": domains, "metrics": flat, "differences": differences, "meta": meta, "sources": sources,
            "scoring": {"texts": texts, "seconds": round(seconds, 2), "texts_per_s": round(texts / seconds, 2)}}


def write_evaluation(evaluation: dict, meta: dict, report_path: str | Path, results_path: str | Path,
                     figures_dir: str | Path, sweep_path: str | Path = "",
                     loss_curves: dict | None = None) -> tuple[dict, list[Path]]:
    """The HTML report of `evaluate_models`' output at `report_path` (its figures as PNG in `figures_dir`, beside
    the sample-efficiency table at `sweep_path` when there is one, and the training `loss_curves`) and the results
    JSON at `results_path`, from which the register stage's gate reads the PMP - control differences with their
    paired intervals. `meta` heads the page. Returns the stage's flat metrics and the figure files."""
    from codepmp.atomic import write_json
    from codepmp.evaluate.html import build_results, render_report

    sweep = json.loads(Path(sweep_path).read_text()) if sweep_path and Path(sweep_path).is_file() else None
    scoring = evaluation["scoring"]
    results = build_results(evaluation["domains"], sample_efficiency=sweep, loss_curves=loss_curves,
                            meta={**meta, "texts scored": scoring["texts"], "scoring seconds": scoring["seconds"],
                                  "texts per second": scoring["texts_per_s"], **evaluation["meta"]})
    figures = render_report(results, report_path, figures_dir)
    write_json({"results": results, "metrics": evaluation["metrics"], "differences": evaluation["differences"],
                "scoring": scoring}, results_path)
    flat = {f"{name}.{key}": value for name, metrics in evaluation["metrics"].items() for key, value in metrics.items()}
    flat.update({f"diff.{key}": value for key, value in evaluation["differences"].items()})
    plumbing = evaluation["meta"].get("plumbing_check") or ""  # the run summary prints it beside the metrics
    return {**flat, "scoring_s": scoring["seconds"], "scored_texts_per_s": scoring["texts_per_s"],
            **({"plumbing_check": plumbing} if plumbing else {})}, figures
