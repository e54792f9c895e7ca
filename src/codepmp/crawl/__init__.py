"""Crawl stage: local directories and tarballs -> filtered, deduplicated Parquet shards of code files."""

from codepmp.crawl.crawl import run_crawl
from codepmp.crawl.shards import read_shards

__all__ = ["read_shards", "run_crawl"]
