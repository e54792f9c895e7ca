"""The reasoning dataset stage: finetuning pairs, held-out dev pairs, best-of-N pools and logic items.

    codepmp reasoning-data --profile local --set reasoning.data_dir=../shared/data --out /tmp/reasoning

Writes to `out_dir` (every table has a `domain` column):
    train_pairs.parquet   prompt, chosen, rejected: what finetuning trains on
    dev_pairs.parquet     prompt, chosen, rejected: held-out pairs for pairwise accuracy
    bon_pool.parquet      gsm8k/math dev problems' candidates (problem_id, candidate, prompt, response, answer,
                          gold, correct) for best-of-N
    logic_dev.parquet     logic dev items, one row per option (item_id, option, prompt, response, gold)
    stats.json            rows per table and domain, where each table's texts came from ("sources"), every seed
                          ("seeds"), sampling statistics, logic id repairs, dropped extra pairs, sha256 of every table

Sources. Train pairs of gsm8k/math are "corrupted" (the reference against copies with a wrong final answer) or
"sampled" (`reasoning.pairs`); dev pairs follow `reasoning.pairs` too, so sampled pairs are evaluated on
sampled dev pairs. The best-of-N pool is `reasoning.pool`: "corrupted" (the reference plus corruptions: only
the reference is right, a plumbing check rather than a measurement), "sampled" or "import". With both sampled,
the dev pairs are made from the pool's own candidates (correct against incorrect of the same problem).
Logic domains always use the real options, whatever the sources say. Pool "shipped" (gsm8k and math) reads the
policy samples shipped in the package (`policy_samples`): the pool from its dev samples, and dev pairs correct
against incorrect candidates of that pool, whatever `pairs` is; pairs "shipped" (only with that pool) take the
train pairs from its train samples, and then no data_dir is needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from codepmp.atomic import write_json, write_table
from codepmp.config import ReasoningConfig
from codepmp.errors import ConfigError, InputError
from codepmp.reasoning import gsm8k, logic
from codepmp.reasoning import math as math_source
from codepmp.reasoning.leakage import HeldOut, drop_held_out
from codepmp.reasoning.policy_samples import SHIPPED_DIR, shipped_domain, shipped_file
from codepmp.reasoning.tasks import Task, gsm8k_tasks
from codepmp.generate.backend import Backend, Sampling
from codepmp.pairs import LOGIC_DOMAINS, MATH_DOMAINS, REASONING_FILES, Pair

POOL_COLUMNS = ["problem_id", "candidate", "prompt", "response", "answer", "gold", "correct", "domain"]


def _sample(items: list, n: int, seed: int, what: str) -> list:
    if n > len(items):
        raise InputError(f"asked for {n} {what} problems but there are only {len(items)}")
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


@dataclasses.dataclass
class Domain:
    """One domain's problems: train and dev as source records, and how to turn them into tasks and pairs."""

    name: str
    train: list
    dev: list
    tasks: Callable[[list], list[Task]]
    corrupted_pairs: Callable[[list, int, int], list[Pair]]
    id_repairs: dict = dataclasses.field(default_factory=dict)
    """Logic only: per split, the ids `logic.unique_items` renamed and the repeated items it dropped."""

    def held_out_texts(self) -> list[str]:
        """What identifies each dev problem inside another text: the question, or a logic item's passage (logic
        questions such as 'Which one of the following must be true?' are shared by many items)."""
        return [p.passage if self.name in LOGIC_DOMAINS else p.question for p in self.dev]


DEV_FILES = {"gsm8k": ["gsm8k/dev.jsonl"], "math": ["math/dev.jsonl"],
             "logiqa2": ["logiqa2/dev.jsonl", "logiqa2/dev200.jsonl"], "reclor": ["reclor/val.json"]}
"""Per domain, the files under `data_dir` that dev pairs, pools and logic items come from (LogiQA 2.0 trains on
dev.jsonl minus dev200, so both)."""


def evaluation_files(cfg: ReasoningConfig) -> list[str]:
    """Every dev/evaluation file the reasoning stage of `cfg` reads, for the crawl's decontamination; a missing
    one is an InputError naming it (a guard that silently skips a file guards nothing)."""
    _check_domains(cfg)
    files = []
    for name in cfg.domains:
        if _shipped(cfg, name):
            files.append(str(shipped_file(name, "dev", Path(cfg.samples_dir) if cfg.samples_dir else SHIPPED_DIR)))
        if not _needs_data(cfg, name):
            continue
        if name == "gsm8k" and not cfg.data_dir:
            files.append(str(gsm8k.packaged_path("dev")))
            continue
        files += [str(Path(cfg.data_dir) / relative) for relative in DEV_FILES[name]]
    if cfg.pool == "import":
        files += [path for _, path in sorted(_pool_files(cfg).items())]
    for path in files:
        if not Path(path).is_file():
            raise InputError(f"reasoning dev/evaluation file '{path}' does not exist (reasoning.data_dir="
                             f"{cfg.data_dir!r}, domains {cfg.domains}): the crawl cannot decontaminate against it")
    return files


def _shipped(cfg: ReasoningConfig, name: str) -> bool:
    return name in MATH_DOMAINS and cfg.pool == "shipped"


def _needs_data(cfg: ReasoningConfig, name: str) -> bool:
    """Whether a domain reads its problems from data files (everything but shipped pairs with a shipped pool)."""
    return not (_shipped(cfg, name) and cfg.pairs == "shipped")


def _check_domains(cfg: ReasoningConfig) -> None:
    for name in cfg.domains:
        if name not in MATH_DOMAINS + LOGIC_DOMAINS:
            raise ConfigError(f"unknown reasoning domain '{name}' (known: {', '.join(MATH_DOMAINS + LOGIC_DOMAINS)})")
        if name != "gsm8k" and not cfg.data_dir and _needs_data(cfg, name):
            raise ConfigError(f"reasoning domain '{name}' needs reasoning.data_dir (only a GSM8K sample is packaged)")


def _pool_files(cfg: ReasoningConfig) -> dict[str, str]:
    """Pool "import": the file of each configured math domain, from `pool_files` or the single `pool_file`."""
    math_domains = [d for d in cfg.domains if d in MATH_DOMAINS]
    unknown = sorted(set(cfg.pool_files) - set(math_domains))
    if unknown:
        raise ConfigError(f"reasoning.pool_files names {unknown}, which are not math domains of this run "
                          f"({math_domains})")
    if cfg.pool_file and cfg.pool_files:
        raise ConfigError("reasoning.pool_file and reasoning.pool_files are both set: give pool_files only")
    if cfg.pool_file:
        if len(math_domains) != 1:
            raise ConfigError(f"reasoning.pool_file is one file but the run has math domains {math_domains}: "
                              "name each one's file in reasoning.pool_files")
        return {math_domains[0]: cfg.pool_file}
    missing = [d for d in math_domains if not cfg.pool_files.get(d)]
    if missing:
        raise ConfigError(f"reasoning.pool is 'import' but reasoning.pool_files has no file for {missing} "
                          "(and reasoning.pool_file is empty)")
    return dict(cfg.pool_files)


def _load(cfg: ReasoningConfig, name: str) -> Domain:
    if name == "gsm8k":
        train, dev = gsm8k.load_problems(cfg.data_dir, "train"), gsm8k.load_problems(cfg.data_dir, "dev")
        return Domain(name, train, dev, gsm8k_tasks, gsm8k.training_pairs)
    if name == "math":
        train, dev = math_source.load_math(cfg.data_dir, "train"), math_source.load_math(cfg.data_dir, "dev")
        return Domain(name, train, dev, math_source.math_tasks, math_source.math_corrupted_pairs)
    if name == "logiqa2":
        train_file, dev_file = logic.load_logiqa2(cfg.data_dir, "dev"), logic.load_logiqa2(cfg.data_dir, "dev200")
    else:
        train_file = logic.read_reclor(Path(cfg.data_dir) / "reclor" / "train.json")
        dev_file = logic.read_reclor(Path(cfg.data_dir) / "reclor" / "val.json")
    dev, dev_repairs = logic.unique_items(dev_file)
    train, train_repairs = logic.unique_items(train_file)
    # By content, not id: ids are reused upstream, and renaming can give one item different ids in the two files.
    held_out = {logic.content_key(item) for item in dev}
    train = [item for item in train if logic.content_key(item) not in held_out]
    return Domain(name, train, dev, logic.logic_tasks, lambda items, _n, _seed: logic.logic_pairs(items),
                  {"train": train_repairs.as_dict(), "dev": dev_repairs.as_dict()})


def _corrupted_pool(domain: Domain, problems: list, size: int, seed: int) -> list[dict]:
    """Per problem the reference solution and `size - 1` corruptions, each labelled by the answer checker."""
    rng = random.Random(seed)
    rows = []
    for problem, task in zip(problems, domain.tasks(problems)):
        if domain.name == "gsm8k":
            texts = [problem.solution] + [gsm8k.corrupt(problem, rng) for _ in range(size - 1)]
        else:
            texts = [problem.solution] + [t for _ in range(size - 1)
                                          if (t := math_source.corrupt_math(problem, rng)) is not None]
        rows += [{"problem_id": task.id, "candidate": k, "prompt": task.prompt, "response": " " + text,
                  "answer": task.answer(text), "gold": task.gold, "correct": task.check(text), "domain": domain.name}
                 for k, text in enumerate(texts)]
    return rows


def _extra_pairs(paths: Sequence[str], seed: int, held_out: HeldOut) -> tuple[list[Pair], dict[str, int]]:
    """The pairs of `extra_pairs` files, less those whose prompt holds a dev problem of the run (Math-Shepherd
    covers GSM8K and MATH questions, dev ones included); counts read, dropped and kept."""
    from codepmp.reasoning.generic import read_preference_pairs
    from codepmp.reasoning.shepherd import read_shepherd, shepherd_pairs

    pairs = []
    for path in paths:
        if "shepherd" in Path(path).name.lower():
            pairs += shepherd_pairs(read_shepherd(path), max_pairs_per_problem=4, seed=seed)
        else:
            pairs += read_preference_pairs(path)
    kept, dropped = drop_held_out(pairs, held_out)
    return kept, {"read": len(pairs), "dropped_dev_problem": dropped, "kept": len(kept)}


def _check(cfg: ReasoningConfig) -> None:
    if cfg.pairs not in ("corrupted", "sampled", "shipped") \
            or cfg.pool not in ("corrupted", "sampled", "import", "shipped"):
        raise ConfigError(f"reasoning.pairs must be corrupted|sampled|shipped and reasoning.pool "
                          f"corrupted|sampled|import|shipped (got {cfg.pairs!r}, {cfg.pool!r})")
    if cfg.pairs == "shipped" and cfg.pool != "shipped":
        raise ConfigError(f"reasoning.pairs 'shipped' needs reasoning.pool 'shipped' (got {cfg.pool!r}): shipped "
                          "dev pairs are made from the shipped pool")
    if cfg.pool == "import" and not cfg.pool_file and not cfg.pool_files:
        raise ConfigError("reasoning.pool is 'import' but reasoning.pool_file is empty (and so is pool_files)")
    if cfg.pairs == "sampled" and cfg.samples_per_problem < 2:
        raise ConfigError(f"reasoning.samples_per_problem is {cfg.samples_per_problem}: sampled pairs need at least "
                          "2 samples per problem (one right, one wrong)")
    for key in ("dev_pairs_per_problem", "candidates_per_problem"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"reasoning.{key} must be at least 1, got {getattr(cfg, key)}")
    _check_domains(cfg)
    if cfg.pool == "import":
        _pool_files(cfg)


def build_reasoning_data(cfg: ReasoningConfig, out_dir: str | Path,
                         policy: Callable[[], Backend] | None = None) -> dict:
    """Build every table for `cfg.domains`; `policy` makes the sampling backend for "sampled" pairs/pools."""
    _check(cfg)
    backend = None

    def sampler() -> Backend:
        nonlocal backend
        if backend is None:
            if policy is None:
                raise ConfigError("sampled reasoning pairs or pools need a policy backend")
            backend = policy()
        return backend

    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)
    tables: dict[str, list[dict]] = {name: [] for name in REASONING_FILES}
    # A shipped pool makes the math dev pairs, whatever makes the train pairs.
    dev_source = "shipped" if cfg.pool == "shipped" else cfg.pairs
    stats: dict = {"sources": {"train_pairs": cfg.pairs, "dev_pairs": dev_source, "pool": cfg.pool},
                   "seeds": {}, "domains": {}}
    held_out = []
    for offset, name in enumerate(cfg.domains):
        # One seed per domain; each use is offset from it so that no two draws share a random stream.
        seed = cfg.seed + 1000 * offset
        if _shipped(cfg, name):
            shipped = shipped_domain(name, cfg.train_problems if cfg.pairs == "shipped" else 0, cfg.dev_problems,
                                     cfg.candidates_per_problem, cfg.rejected_per_problem, cfg.dev_pairs_per_problem,
                                     seed, Path(cfg.samples_dir) if cfg.samples_dir else SHIPPED_DIR,
                                     train_samples=cfg.samples_per_problem)
            for table in ("train", "dev", "pool"):
                tables[table] += shipped[table]
            held_out += shipped["held_out"]
            stats["seeds"][name] = {"train_pairs": seed, "dev_pairs": seed + 1}
            stats["domains"][name] = shipped["stats"]
            if cfg.pairs != "shipped":  # train pairs from the data, as without a shipped pool
                domain = _load(cfg, name)
                held_out += domain.held_out_texts()
                train = _sample(domain.train, cfg.train_problems, seed, f"{name} train")
                train_pairs = _train_pairs(cfg, domain, train, sampler, sampling, seed, shipped["stats"])
                tables["train"] += [{**dataclasses.asdict(p), "domain": name} for p in train_pairs]
                stats["seeds"][name]["problems"] = seed
                shipped["stats"]["sources"]["train_pairs"] = cfg.pairs
            continue
        domain = _load(cfg, name)
        held_out += domain.held_out_texts()
        seeds = {"problems": seed}
        train = _sample(domain.train, cfg.train_problems, seed, f"{name} train")
        dev = _sample(domain.dev, cfg.dev_problems, seed, f"{name} dev")
        domain_stats: dict = {}
        train_pairs = _train_pairs(cfg, domain, train, sampler, sampling, seed, domain_stats)
        tables["train"] += [{**dataclasses.asdict(p), "domain": name} for p in train_pairs]
        if name in MATH_DOMAINS:
            seeds.update(train_pairs=seed, dev_pairs=_dev_pair_seed(cfg, seed), pool=seed + 2)
            pool_rows, dev_pairs, dev_stats = _math_dev(cfg, domain, dev, sampler, sampling, seed)
            tables["pool"] += pool_rows
            domain_stats["sources"] = stats["sources"]
            domain_stats["pool_correct_fraction"] = sum(r["correct"] for r in pool_rows) / max(len(pool_rows), 1)
            if dev_stats is not None:
                domain_stats["dev_sampling"] = dev_stats
        else:  # logic pairs are the right option against every wrong one: nothing corrupted, nothing random
            domain_stats["sources"] = {"train_pairs": "options", "dev_pairs": "options"}
            dev_pairs = domain.corrupted_pairs(dev, cfg.dev_pairs_per_problem, seed + 1)
            domain_stats["id_repairs"] = domain.id_repairs
            for item in dev:
                tables["logic"] += [{"item_id": item.id, "option": k, "prompt": logic.logic_prompt(item),
                                     "response": logic.option_response(item, k), "gold": item.answer, "domain": name}
                                    for k in range(len(item.options))]
        tables["dev"] += [{**dataclasses.asdict(p), "domain": name} for p in dev_pairs]
        stats["seeds"][name] = seeds
        stats["domains"][name] = domain_stats
    if cfg.extra_pairs:
        extra, stats["extra_pairs"] = _extra_pairs(cfg.extra_pairs, cfg.seed, HeldOut(held_out))
        stats["seeds"]["extra_pairs"] = cfg.seed
        tables["train"] += [{**dataclasses.asdict(p), "domain": "extra"} for p in extra]
    if not tables["train"]:
        raise InputError(f"the reasoning domains {cfg.domains} gave no finetuning pairs")
    return {**write_tables(tables, Path(out_dir), stats), "data": describe(stats, tables)}


def describe(stats: dict, tables: dict[str, list[dict]]) -> str:
    """One line per domain saying where its pairs and pool came from, for the run summary."""
    parts = []
    for name, domain in stats["domains"].items():
        sources = domain.get("sources", {})
        count = lambda table: sum(r["domain"] == name for r in tables[table])  # noqa: E731
        text = (f"{name}: {count('train')} train pairs {sources.get('train_pairs', '?')}, "
                f"{count('dev')} dev pairs {sources.get('dev_pairs', '?')}")
        if name in MATH_DOMAINS:
            problems = len({r["problem_id"] for r in tables["pool"] if r["domain"] == name})
            text += f", pool {sources.get('pool', '?')} ({problems} problems)"
        if "shipped" in domain:
            text += f" [{domain['shipped']['model']} samples]"
        parts.append(text)
    return "; ".join(parts)


def _train_pairs(cfg: ReasoningConfig, domain: Domain, train: list, sampler: Callable[[], Backend],
                 sampling: Sampling, seed: int, domain_stats: dict) -> list[Pair]:
    """A domain's finetuning pairs from its train problems: sampled from the policy (math domains with `pairs`
    "sampled", counts put in `domain_stats`) or corrupted references / logic options."""
    if domain.name in MATH_DOMAINS and cfg.pairs == "sampled":
        from codepmp.reasoning.sampled import sampled_pairs

        pairs, sample_stats = sampled_pairs(domain.tasks(train), sampler(), dataclasses.replace(sampling, seed=seed),
                                            k=cfg.samples_per_problem, max_pairs_per_problem=cfg.rejected_per_problem,
                                            seed=seed)
        domain_stats["sampling"] = sample_stats.as_dict()
        return pairs
    return domain.corrupted_pairs(train, cfg.rejected_per_problem, seed)


def _dev_pair_seed(cfg: ReasoningConfig, seed: int) -> int:
    """Sampled dev pairs made from a sampled pool share its seed; otherwise they have their own."""
    return seed + 2 if cfg.pairs == cfg.pool == "sampled" else seed + 1


def _math_dev(cfg: ReasoningConfig, domain: Domain, dev: list, sampler: Callable[[], Backend], sampling: Sampling,
              seed: int) -> tuple[list[dict], list[Pair], dict | None]:
    """A math domain's best-of-N pool rows and dev pairs (with the sampling counts when the pairs are sampled).

    Seeds: the pool uses `seed + 2`; dev pairs `_dev_pair_seed` (sampled ones reuse a sampled pool's samples)."""
    from codepmp.reasoning.pools import imported_pool, labelled_pool
    from codepmp.reasoning.sampled import label_solutions, pair_solutions, sample_solutions

    tasks = domain.tasks(dev)
    solutions = labels = None
    if cfg.pool == "sampled":
        solutions = sample_solutions(tasks, sampler(), dataclasses.replace(sampling, seed=seed + 2),
                                     cfg.candidates_per_problem, desc=f"{domain.name} candidate pool")
        labels = label_solutions(tasks, solutions)
        rows = labelled_pool(tasks, solutions, labels)
    elif cfg.pool == "import":
        checker = "math" if domain.name == "math" else "gsm8k"
        rows = imported_pool(_pool_files(cfg)[domain.name], checker, tasks)
    else:
        rows = _corrupted_pool(domain, dev, cfg.candidates_per_problem, seed + 2)
    rows = [{**row, "domain": domain.name} for row in rows]
    pair_seed = _dev_pair_seed(cfg, seed)
    if cfg.pairs != "sampled":
        return rows, domain.corrupted_pairs(dev, cfg.dev_pairs_per_problem, pair_seed), None
    if solutions is None:
        solutions = sample_solutions(tasks, sampler(), dataclasses.replace(sampling, seed=pair_seed),
                                     cfg.samples_per_problem, desc=f"{domain.name} dev solutions")
        labels = label_solutions(tasks, solutions)
    pairs, pair_stats = pair_solutions(tasks, solutions, labels, cfg.dev_pairs_per_problem, pair_seed)
    return rows, pairs, pair_stats.as_dict()


PAIR_SCHEMA = pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
                         ("domain", pa.string())])
SCHEMAS = {"train": PAIR_SCHEMA, "dev": PAIR_SCHEMA,
           "pool": pa.schema([("problem_id", pa.string()), ("candidate", pa.int64()), ("prompt", pa.string()),
                              ("response", pa.string()), ("answer", pa.string()), ("gold", pa.string()),
                              ("correct", pa.bool_()), ("domain", pa.string())]),
           "logic": pa.schema([("item_id", pa.string()), ("option", pa.int64()), ("prompt", pa.string()),
                               ("response", pa.string()), ("gold", pa.int64()), ("domain", pa.string())])}


def write_tables(tables: dict[str, list[dict]], out: Path, stats: dict) -> dict:
    """Every table (keys of REASONING_FILES) and stats.json, each written atomically; returns the numeric stats."""
    out.mkdir(parents=True, exist_ok=True)
    stats["sha256"] = {}
    for name, rows in tables.items():
        path = out / REASONING_FILES[name]
        write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[name]), path)
        stats["sha256"][name] = hashlib.sha256(path.read_bytes()).hexdigest()
        stats[name] = len(rows)
    pool = tables["pool"]
    stats["pool_correct_fraction"] = sum(r["correct"] for r in pool) / max(len(pool), 1)
    write_json(stats, out / "stats.json")
    return {k: v for k, v in stats.items() if isinstance(v, (int, float))}

