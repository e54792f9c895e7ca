"""Reading a finished crawl back for the next stage.

    from codepmp.shards import read_shards
    rows = read_shards("out/crawl")          # or s3://bucket/prefix, or a KFP artifact folder holding manifest.json
    # [{"id", "source", "path", "language", "content", "repo", "commit", "license", "category", ...}, ...]

`manifest.json` names the shards and where they live (`location`: the crawl folder, possibly in the object
store), the ids dropped as duplicates across ranks (`excluded`) and, with `max_files`, the ids kept (`keep`).
"""

from __future__ import annotations

import os
from typing import Any

from codepmp.errors import InputError
from codepmp.storage import LocalFolder, open_folder

MANIFEST = "manifest.json"
READ_COLUMNS = ("id", "source", "path", "language", "content", "size_bytes", "n_lines", "repo", "commit",
                "license", "category", "engineering_prob")


def read_manifest(path: str | os.PathLike) -> tuple[dict[str, Any], LocalFolder]:
    """The final manifest of the crawl at `path` and the folder its shards are in."""
    folder = open_folder(path)
    if not folder.exists(MANIFEST):
        raise InputError(f"{folder.location} holds no finished crawl ({MANIFEST} is missing)")
    manifest = folder.get_json(MANIFEST)
    location = manifest.get("location")
    if location and location.startswith("s3://") and location != folder.location:
        folder = open_folder(location)
    return manifest, folder


def read_shards(path: str | os.PathLike, columns: tuple[str, ...] = READ_COLUMNS) -> list[dict[str, Any]]:
    """Rows kept by the crawl at `path`, sorted by id; each file once even if several ranks kept it."""
    manifest, folder = read_manifest(path)
    excluded = set(manifest.get("excluded") or ())
    keep = set(manifest["keep"]) if manifest.get("keep") is not None else None
    by_id: dict[str, dict[str, Any]] = {}
    for shard in manifest["shards"]:
        table = folder.get_table(shard["name"], list(columns))
        for row in table.to_pylist():
            if row["id"] in excluded or (keep is not None and row["id"] not in keep):
                continue
            by_id.setdefault(row["id"], row)
    return [by_id[key] for key in sorted(by_id)]
