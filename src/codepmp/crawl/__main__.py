"""Run the crawl stage alone.

    python -m codepmp.crawl OUT_DIR [--source DIR_OR_TARBALL ...] [--language python ...] [--max-files N]
                                    [--rank R --world-size W] [--no-progress]

With no --source it crawls the running Python's standard library. Prints stats.json.
"""

from __future__ import annotations

import argparse
import json
import sys

from codepmp.config import CrawlConfig
from codepmp.crawl.crawl import run_crawl
from codepmp.errors import CodepmpError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codepmp.crawl", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--source", action="append", default=[], help="directory or tarball; repeatable")
    parser.add_argument("--language", action="append", default=None, help="language to keep; repeatable")
    parser.add_argument("--max-files", type=int, default=0)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = CrawlConfig(sources=args.source, max_files=args.max_files)
    if args.language:
        cfg.languages = args.language
    try:
        stats = run_crawl(cfg, args.out_dir, args.rank, args.world_size, progress=not args.no_progress)
    except CodepmpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
