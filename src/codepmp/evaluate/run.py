"""Evaluate reward models side by side (PMP vs control): pairwise accuracy on dev pairs and best-of-N."""

from __future__ import annotations

from pathlib import Path

import torch

from codepmp.config import EvaluateConfig
from codepmp.evaluate.metrics import best_of_n, pairwise_accuracy
from codepmp.models import load_reward_model
from codepmp.progress import progress
from codepmp.reasoning.build import read_table
from codepmp.train.data import encode, pad_right


@torch.inference_mode()
def score(model_dir: str, texts: list[tuple[str, str]], batch_size: int, max_length: int,
          desc: str = "score") -> list[float]:
    """Reward of each (prompt, response), read by the transformers sequence-classification head itself."""
    model, tokenizer = load_reward_model(model_dir)
    model.eval()
    encoded = [encode(tokenizer, p, r, max_length).ids for p, r in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    scores = [0.0] * len(encoded)
    for start in progress(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[start:start + batch_size]
        ids, mask = pad_right([encoded[i] for i in idx], tokenizer.pad_token_id)
        logits = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).float()
        for i, value in zip(idx, logits.tolist()):
            scores[i] = value
    return scores


def dev_pairwise_accuracy(cfg: EvaluateConfig, model_dir: str, dev: list[dict]) -> float:
    """Pairwise accuracy of `model_dir` on dev pair rows (prompt, chosen, rejected)."""
    texts = [(r["prompt"], r["chosen"]) for r in dev] + [(r["prompt"], r["rejected"]) for r in dev]
    scores = score(model_dir, texts, cfg.batch_size, cfg.max_length, desc=f"score {Path(model_dir).name}")
    return pairwise_accuracy(scores[:len(dev)], scores[len(dev):])


def evaluate_model(cfg: EvaluateConfig, model_dir: str, data_dir: str | Path, seed: int = 0) -> dict:
    dev = read_table(data_dir, "dev")
    pool = read_table(data_dir, "pool")
    texts = ([(r["prompt"], r["chosen"]) for r in dev] + [(r["prompt"], r["rejected"]) for r in dev]
             + [(r["prompt"], r["response"]) for r in pool])
    scores = score(model_dir, texts, cfg.batch_size, cfg.max_length, desc=f"score {Path(model_dir).name}")
    n = len(dev)
    metrics = {"pairwise_accuracy": pairwise_accuracy(scores[:n], scores[n:2 * n])}
    bon = best_of_n(pool, scores[2 * n:], cfg.best_of_n, cfg.bon_trials, seed)
    for size, by_strategy in bon.items():
        for strategy, value in by_strategy.items():
            metrics[f"bon{size}_{strategy}"] = value
    return metrics


def report_markdown(results: dict[str, dict], cfg: EvaluateConfig, dev_pairs: int) -> str:
    """A side-by-side table of every metric, one column per model."""
    names = list(results)
    keys = list(next(iter(results.values())))
    lines = ["# codepmp evaluation\n", f"GSM8K dev pairs: {dev_pairs}; best-of-N over N in {cfg.best_of_n} "
             f"({cfg.bon_trials} draws per problem). Gate metric: `{cfg.gate_metric}`.\n",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(f"{results[m][key]:.4f}" for m in names) + " |")
    return "\n".join(lines) + "\n"
