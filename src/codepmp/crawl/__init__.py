"""Crawl stage: local, GitHub and Hugging Face sources -> filtered, decontaminated, deduplicated Parquet shards."""

from codepmp.crawl.crawl import finalize_crawl, run_crawl
from codepmp.shards import read_shards

__all__ = ["finalize_crawl", "read_shards", "run_crawl"]
