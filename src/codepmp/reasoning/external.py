"""Evaluation tables from a team's own labelled files, so `codepmp evaluate` can score any policy's samples.

    codepmp evaluate --pmp models:/codepmp-reward-model@champion --pool samples.jsonl --out /tmp/eval
    codepmp evaluate --pmp ./rm-a --control ./rm-b --pairs pairs.jsonl --pool samples.jsonl --out /tmp/eval

Formats (JSON lines, one object a line):
- pool (best-of-N): {"problem_id": str, "prompt": str, "gold": str, "candidates": [{"text": str,
  "is_correct": bool}, ...]}; `gold` may be left out. Labels are kept as given; the final answer of each
  candidate (for majority voting) is read with the checker of `--pool-domain` (gsm8k or math).
- pairs (pairwise accuracy): {"prompt": str, "chosen": str, "rejected": str}; pairs with the same prompt are
  one problem for the bootstrap.
Prompts are scored as they are: they must already be in the format the reward models were trained on
("Instruction:{question}\\n\\nResponse:" for codepmp's).

`external_tables` writes them as the reasoning stage's tables (stats.json records both as imported, so the
report carries no plumbing-check label), which the evaluate stage then reads like any other run's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from codepmp.errors import InputError
from codepmp.pairs import MATH_DOMAINS
from codepmp.reasoning.build import write_tables
from codepmp.reasoning.generic import read_preference_pairs
from codepmp.reasoning.pools import imported_pool

PAIRS_DOMAIN = "pairs"
"""Domain name of imported pairs in the report."""


def external_tables(out_dir: str | Path, pool: str | None = None, pool_domain: str = "gsm8k",
                    pairs: str | None = None, pairs_domain: str = PAIRS_DOMAIN) -> Path:
    """The reasoning tables of an imported pool and/or pair file in `out_dir` (dev pairs, best-of-N pool; no
    training pairs, no logic items); returns `out_dir`."""
    if not pool and not pairs:
        raise InputError("evaluate needs --data, or --pool and/or --pairs")
    if pool and pool_domain not in MATH_DOMAINS:
        raise InputError(f"--pool-domain '{pool_domain}' is not one of {', '.join(MATH_DOMAINS)}")
    tables: dict[str, list[dict]] = {"train": [], "dev": [], "pool": [], "logic": []}
    if pool:
        tables["pool"] = imported_pool(pool, pool_domain)
    if pairs:
        tables["dev"] = [{**dataclasses.asdict(p), "domain": pairs_domain} for p in read_preference_pairs(pairs)]
        if not tables["dev"]:
            raise InputError(f"pairs {pairs}: no pairs in the file")
    sources = {"train_pairs": "none", "dev_pairs": "import" if pairs else "none", "pool": "import" if pool else "none"}
    write_tables(tables, Path(out_dir), {"domains": {}, "sources": sources,
                                         "files": {"pool": str(pool or ""), "pairs": str(pairs or "")}})
    return Path(out_dir)
