"""Crawl throughput and dedup quality: codepmp's crawl vs. datatrove's MinHash pipeline, same corpus, same rules.

    .venv/bin/python benchmarks/crawl_vs_datatrove.py                 # stdlib + the venv's site-packages, 3 repeats
    .venv/bin/python benchmarks/crawl_vs_datatrove.py --limit-mb 50   # a quicker look
    .venv/bin/python benchmarks/crawl_vs_datatrove.py --smoke         # 1 MB of the stdlib, once: the script only

Both tools see the same files: the Python files of this interpreter's standard library and of the venv's
site-packages, plus planted near-duplicates (an identifier renamed everywhere, or the file reformatted) of
`--planted` files that pass the filters. Both apply the same per-file filters (codepmp's `check_content`,
wrapped in a datatrove `LambdaFilter`), the same word tokenization (codepmp's `words`, given to datatrove as
its word tokenizer), 5-word shingles and 16 bands x 8 rows of 64-bit MinHash. Decontamination is off (datatrove
has no equivalent step configured here). datatrove runs its documented four stages (signatures, buckets,
clusters, filter) with one worker, the filtered documents cached as JSONL between the first and last stage;
codepmp runs one rank. Each tool runs in its own child process; peak RSS comes from that child's rusage.
The comparison runs `--repeats` times, the tools taking turns at going first.

Prints files/s and MB/s of input (at the median wall time), peak memory, the throughput and peak-memory ratios
codepmp/datatrove as median, min and max over the repeats, how far the kept sets agree, and the recall of each
on the planted near-duplicates (a pair counts as caught when not both files are kept). `--smoke` crawls the
first 1 MB of the standard library with 4 planted pairs, once, and runs the decontaminating side too (against
the packaged reasoning data, plus `--eval-data` if given).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from pathlib import Path

from repeat import add_flags, run_child, settle_repeats, spread

IDENTIFIER = re.compile(r"\b[a-z_][a-z0-9_]{3,}\b")
KEYWORDS = {"self", "return", "import", "from", "class", "def", "None", "True", "False", "with", "while", "lambda",
            "yield", "raise", "assert", "pass", "else", "elif", "except", "finally", "global", "nonlocal", "async",
            "await", "break", "continue", "print"}


def corpus_roots() -> list[str]:
    return [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]]


def list_files(roots: list[str], limit_bytes: int) -> list[tuple[str, str]]:
    """(root, relative path) of the .py files under `roots`, sorted, up to `limit_bytes` in total."""
    from codepmp.crawl.sources import walk_directory

    files, total = [], 0
    for root in roots:
        for entry in walk_directory(Path(root)):
            if entry.skip is None and entry.path.endswith(".py"):
                files.append((root, entry.path))
                total += entry.size
                if limit_bytes and total >= limit_bytes:
                    return files
    return files


def plant(files: list[tuple[str, str]], cfg, count: int, out: Path) -> list[tuple[str, str]]:
    """Write renamed and reformatted copies of `count` files that pass the filters; return (original, copy) paths."""
    from codepmp.crawl import filters

    rng = random.Random(0)
    pairs = []
    for root, rel in rng.sample(files, len(files)):
        if len(pairs) >= count:
            break
        data = Path(root, rel).read_bytes()
        verdict = filters.check_content(data, rel, cfg)
        if verdict.reason or verdict.text.count("\n") < 40:
            continue
        text = verdict.text
        names = Counter(n for n in IDENTIFIER.findall(text) if n not in KEYWORDS)
        if not names:
            continue
        name, _ = names.most_common(1)[0]
        i = len(pairs)
        if i % 2:
            variant = text.replace("    ", "  ").replace(", ", ",").replace(" = ", "=")
        else:
            variant = re.sub(rf"\b{name}\b", f"{name}_renamed", text)
        if variant == text:
            continue
        target = out / f"planted_{i:04d}.py"
        target.write_text(variant, encoding="utf-8")
        pairs.append((str(Path(root, rel)), str(target)))
    return pairs


def stage_corpus(files: list[tuple[str, str]], planted: Path, out: Path) -> list[str]:
    """Symlink-free corpus folder: hard links where possible (same device), else copies; returns sources."""
    for root, rel in files:
        target = out / "corpus" / Path(root).name / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(Path(root, rel), target)
        except OSError:
            shutil.copyfile(Path(root, rel), target)
    return [str(out / "corpus"), str(planted)]


def run_codepmp(sources: list[str], work: Path, decontam: bool = False) -> dict:
    from codepmp.config import CrawlConfig, DecontamConfig
    from codepmp.crawl import read_shards, run_crawl

    cfg = CrawlConfig(sources=sources, max_bytes=1_000_000, decontam=DecontamConfig(enabled=decontam))
    out = work / ("codepmp-decontam-out" if decontam else "codepmp-out")
    stats = run_crawl(cfg, out, progress=False)
    kept = [f"{Path(r['source']).name}/{r['path']}" for r in read_shards(out, columns=("id", "source", "path"))]
    return {"kept": kept, "dropped": stats["dropped"]}


def run_datatrove(sources: list[str], work: Path) -> dict:
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    from codepmp.config import CrawlConfig
    from codepmp.crawl import filters
    from codepmp.crawl.dedup import words
    from codepmp.crawl.sources import walk_directory

    cfg = CrawlConfig(max_bytes=1_000_000)

    class FileReader(PipelineStep):
        name, type = "files", "Reader"

        def run(self, data=None, rank: int = 0, world_size: int = 1):
            for source in sources:
                for entry in walk_directory(Path(source)):
                    if entry.skip or filters.path_drop_reason(entry.path, cfg) or entry.size > cfg.max_bytes:
                        continue
                    data = entry.read(cfg.max_bytes + 1)
                    verdict = filters.check_content(data, entry.path, cfg)
                    yield Document(text=verdict.text or "", id=f"{Path(source).name}/{entry.path}",
                                   metadata={"reason": verdict.reason or ""})

    class SameWords(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return [w.decode("utf-8", "surrogatepass") for w in words(text)]

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    minhash = MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=8, seed=1,
                            norm_config=TextNormConfig(lowercase=False, norm_whitespace=False,
                                                       remove_punctuation=False, norm_unicode_diacritics=False,
                                                       norm_numbers=False),
                            hash_config=HashConfig(precision=64))
    base = work / "datatrove"
    steps = [
        [FileReader(), LambdaFilter(lambda doc: not doc.metadata["reason"]), JsonlWriter(str(base / "filtered")),
         MinhashDedupSignature(str(base / "sigs"), config=minhash, language=SameWords())],
        [MinhashDedupBuckets(str(base / "sigs"), str(base / "buckets"), config=minhash)],
        [MinhashDedupCluster(str(base / "buckets"), str(base / "remove"), config=minhash)],
        [JsonlReader(str(base / "filtered")), MinhashDedupFilter(str(base / "remove")),
         JsonlWriter(str(base / "kept"))],
    ]
    tasks = [1, minhash.num_buckets, 1, 1]
    for i, (pipeline, n_tasks) in enumerate(zip(steps, tasks)):
        LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=1, logging_dir=str(base / f"logs{i}"),
                              skip_completed=False).run()
    kept = []
    import gzip

    for path in sorted((base / "kept").rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            kept += [json.loads(line)["id"] for line in f]
    return {"kept": kept}


def child(tool: str, sources: list[str], work: Path, result: Path) -> None:
    start = time.perf_counter()
    if tool == "datatrove":
        out = run_datatrove(sources, work)
    else:
        out = run_codepmp(sources, work, decontam=tool == "codepmp+decontam")
    out["wall_s"] = time.perf_counter() - start
    result.write_text(json.dumps(out))


def measure(tool: str, sources: list[str], work: Path) -> dict:
    """One run of `tool` in a child process with a fresh working folder, removed after (datatrove's caches
    hold a copy of the corpus)."""
    work.mkdir(parents=True, exist_ok=True)
    try:
        env = {**os.environ, "LOGURU_LEVEL": "WARNING"}
        proc = run_child([sys.executable, __file__, "--child", tool, "--work", str(work), "--sources",
                          json.dumps(sources)], env=env, capture=False)
        if proc.returncode != 0:
            raise SystemExit(f"{tool} run failed with exit code {proc.returncode}")
        out = json.loads((work / f"{tool}.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["peak_rss_mb"] = proc.peak_rss_mb
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit-mb", type=float, default=0, help="stop listing files after this many MB (0: all)")
    parser.add_argument("--planted", type=int, default=200, help="near-duplicate pairs to plant")
    parser.add_argument("--eval-data", default="",
                        help="also run codepmp with decontamination against these evaluation files/folders")
    parser.add_argument("--work", default="", help="working folder (default: a temp folder, removed after)")
    add_flags(parser, "1 MB of the standard library, 4 planted pairs, 1 repeat, decontamination side included")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--sources", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, json.loads(args.sources), Path(args.work), Path(args.work) / f"{args.child}.json")
        return
    settle_repeats(args, args.smoke)
    if args.smoke:
        args.limit_mb, args.planted = args.limit_mb or 1, min(args.planted, 4)

    from codepmp.config import CrawlConfig

    work = Path(args.work or tempfile.mkdtemp(prefix="crawl-bench-"))
    try:
        files = list_files(corpus_roots(), int(args.limit_mb * 1e6))
        planted_dir = work / "planted"
        planted_dir.mkdir(parents=True, exist_ok=True)
        pairs = plant(files, CrawlConfig(max_bytes=1_000_000), args.planted, planted_dir)
        sources = stage_corpus(files, planted_dir, work)
        n_files = len(files) + len(pairs)
        n_bytes = sum(p.stat().st_size for s in sources for p in Path(s).rglob("*.py"))
        print(f"corpus: {n_files} .py files, {n_bytes / 1e6:.1f} MB ({len(pairs)} planted near-duplicates)")
        tools = ["datatrove", "codepmp"]
        if args.eval_data or args.smoke:
            tools.append("codepmp+decontam")
        if args.eval_data:
            os.environ["CODEPMP_EVAL_DATA"] = args.eval_data
        runs: dict[str, list[dict]] = {tool: [] for tool in tools}
        for repeat in range(args.repeats):
            for tool in (tools if repeat % 2 == 0 else tools[::-1]):
                runs[tool].append(measure(tool, sources, work / f"{tool}-{repeat}"))
        report(runs, pairs, n_files, n_bytes, sources)
        if "codepmp+decontam" in runs:
            extra, plain = runs["codepmp+decontam"], runs["codepmp"]
            against = args.eval_data or "the packaged reasoning data only"
            print(f"\ncodepmp with decontamination ({against}): median {median(extra, 'wall_s'):.1f} s, "
                  f"{n_bytes / 1e6 / median(extra, 'wall_s'):.2f} MB/s, peak RSS "
                  f"{spread([r['peak_rss_mb'] for r in extra], ' MB', 0)}; drops per reason: "
                  f"{json.dumps(extra[-1]['dropped'])}")
            ratios = [e["wall_s"] / p["wall_s"] for e, p in zip(extra, plain)]
            print(f"wall time with decontamination / without: {spread(ratios)}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(runs: dict[str, list[dict]], pairs: list[tuple[str, str]], n_files: int, n_bytes: int,
           sources: list[str]) -> None:
    corpus, planted = Path(sources[0]), Path(sources[1])
    # Both crawls are deterministic, so the kept sets of the last repeat stand for all of them.
    results = {tool: {**r[-1], "wall_s": median(r, "wall_s"), "peak_rss_mb": max(x["peak_rss_mb"] for x in r)}
               for tool, r in runs.items() if tool in ("datatrove", "codepmp")}

    def key(path: str) -> str:
        p = Path(path)
        if p.parent == planted:
            return f"{planted.name}/{p.name}"
        for root in corpus_roots():
            if path.startswith(root + os.sep):
                return f"{corpus.name}/{Path(root).name}/{Path(path).relative_to(root)}"
        return path

    def jaccard(a: str, b: str) -> float:
        from codepmp.crawl.dedup import ngram_hashes, word_ids, words

        x, y = (set(ngram_hashes(word_ids(words(Path(p).read_text(encoding="utf-8"))), 5).tolist()) for p in (a, b))
        return len(x & y) / len(x | y)

    print(f"\nmedian over {len(runs['codepmp'])} repeats; peak MB: the largest of the child process's peak RSS")
    print(f"{'tool':10} {'wall s':>8} {'files/s':>9} {'MB/s':>7} {'peak MB':>8} {'kept':>7} {'recall':>7}")
    for tool, r in results.items():
        kept = set(r["kept"])
        caught = sum(not (key(a) in kept and key(b) in kept) for a, b in pairs)
        r["recall"] = caught / len(pairs) if pairs else float("nan")
        print(f"{tool:10} {r['wall_s']:8.1f} {n_files / r['wall_s']:9.0f} {n_bytes / 1e6 / r['wall_s']:7.2f} "
              f"{r['peak_rss_mb']:8.0f} {len(kept):7d} {r['recall']:7.3f}")
    for tool, r in results.items():
        kept = set(r["kept"])
        missed = sorted(round(jaccard(a, b), 2) for a, b in pairs if key(a) in kept and key(b) in kept)
        print(f"{tool} missed {len(missed)} planted pairs; their 5-gram Jaccard: {missed}")
    ours, theirs = results["codepmp"], results["datatrove"]
    a, b = set(ours["kept"]), set(theirs["kept"])
    paired = list(zip(runs["codepmp"], runs["datatrove"]))
    print(f"\nthroughput ratio codepmp/datatrove: {spread([t['wall_s'] / o['wall_s'] for o, t in paired])}")
    print(f"peak memory ratio codepmp/datatrove: {spread([o['peak_rss_mb'] / t['peak_rss_mb'] for o, t in paired])}")
    print(f"kept-set agreement: Jaccard {len(a & b) / len(a | b):.4f}; only codepmp {len(a - b)}, "
          f"only datatrove {len(b - a)}")
    print(f"codepmp drops per reason: {json.dumps(ours['dropped'])}")


if __name__ == "__main__":
    main()
