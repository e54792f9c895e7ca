"""The `hf:` crawl source: rows of a Hugging Face dataset (The Stack style) as a stream of `Entry`s.

    from codepmp.crawl.hub import HubSource
    source = HubSource("hf:bigcode/the-stack-smol", cfg.hub, licenses=cfg.github.licenses)
    for entry in source.entries():
        data = entry.read(limit) if entry.skip is None else None

`hf:NAME` is a local folder when NAME is a directory, else a dataset id on the Hub. Either way rows are
streamed with `datasets.load_dataset(..., streaming=True)`, so a dataset far larger than memory or disk
is read row by row and nothing is cached:

* a local folder (or its `HubConfig.data_dir` sub-folder) is read with the "parquet" builder when it
  holds .parquet files, else the "json" builder for .jsonl/.json files; files are found recursively,
  skipping hidden paths, and read in sorted order;
* a Hub id is read with its own configuration, narrowed by `data_dir` and `split`.

Each row becomes one Entry whose content is the UTF-8 encoding of the content column. With
`HubConfig.license_field` set, a row is kept when at least one of its licenses (one SPDX id or a list of
them, compared case-insensitively as SPDX ids are) is in `licenses`; a row with none of them, or with no
license at all, comes back with `skip="license"` so the crawl counts it. `datasets` is imported only when
rows are read, so that `import codepmp.crawl` stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from codepmp.config import HubConfig
from codepmp.crawl.sources import Entry
from codepmp.errors import CodepmpError, InputError, ServiceError

HUB_PREFIX = "hf:"

PARQUET_SUFFIXES = (".parquet",)
JSON_SUFFIXES = (".jsonl", ".json")

MAX_ERROR_CHARS = 300
"""Library error messages are cut to their first line and this many characters."""


def is_hub_source(source: str) -> bool:
    """True for an `hf:` source."""
    return source.startswith(HUB_PREFIX)


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def _is_connection_error(error: BaseException) -> bool:
    """Network trouble, offline mode included (huggingface_hub's OfflineModeIsEnabled is a ConnectionError);
    httpx and requests errors are recognised by name so neither needs importing here."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"ConnectError", "TimeoutException", "NetworkError", "ConnectTimeout", "ReadTimeout"})


def local_data_files(folder: Path) -> tuple[str, list[str]]:
    """(builder, sorted files) of a local dataset folder: Parquet files, else JSON Lines/JSON files.

    Raises InputError for a folder with neither, or with both (which builder to use would be a guess).
    """
    files = sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    parquet = [str(p) for p in files if p.name.lower().endswith(PARQUET_SUFFIXES)]
    json = [str(p) for p in files if p.name.lower().endswith(JSON_SUFFIXES)]
    if parquet and json:
        raise InputError(f"hf dataset folder {folder} mixes .parquet and .json/.jsonl files; keep one format")
    if parquet:
        return "parquet", parquet
    if json:
        return "json", json
    raise InputError(f"hf dataset folder {folder} has no .parquet, .jsonl or .json files")


def _reader(data: bytes) -> Callable[[int], bytes]:
    def read(limit: int) -> bytes:
        return data[:limit]
    return read


def _unreadable(limit: int) -> bytes:
    raise OSError("entry is not readable")


def _as_bytes(value: Any, column: str, name: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InputError(f"hf dataset {name}: column {column!r} holds {type(value).__name__}, not text")


def _license_ids(value: Any) -> list[str]:
    """License ids of one row: a string or a list of strings (The Stack's `max_stars_repo_licenses`)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, Iterable):
        return [str(item) for item in value if item is not None and str(item).strip()]
    return [str(value)]


class HubSource:
    """An `hf:` source; `entries()` streams its rows in a deterministic order (see the module docstring)."""

    def __init__(self, source: str, cfg: HubConfig, licenses: Sequence[str] | None = None) -> None:
        name = source[len(HUB_PREFIX):] if is_hub_source(source) else source
        if not name.strip():
            raise InputError(f"crawl source {source!r} names no dataset (expected hf:OWNER/NAME or hf:/path)")
        self.source = source
        self.name = name
        self.cfg = cfg
        self.licenses = None if licenses is None else frozenset(spdx.lower() for spdx in licenses)

    @property
    def local_folder(self) -> Path | None:
        """The local dataset folder, or None for a Hub id."""
        path = Path(self.name).expanduser()
        return path if path.is_dir() else None

    def required_columns(self) -> dict[str, str]:
        """Column name -> the HubConfig field that names it."""
        fields = {"content_field": self.cfg.content_field, "path_field": self.cfg.path_field,
                  "repo_field": self.cfg.repo_field, "license_field": self.cfg.license_field}
        return {column: field for field, column in fields.items() if column}

    def load_arguments(self) -> dict[str, Any]:
        """Keyword arguments of `datasets.load_dataset` for this source."""
        folder = self.local_folder
        if folder is None:
            return {"path": self.name, "data_dir": self.cfg.data_dir or None, "split": self.cfg.split,
                    "streaming": True}
        data_folder = folder / self.cfg.data_dir if self.cfg.data_dir else folder
        if not data_folder.is_dir():
            raise InputError(f"hf dataset folder {folder} has no sub-folder {self.cfg.data_dir!r} (hub.data_dir)")
        builder, files = local_data_files(data_folder)
        return {"path": builder, "data_files": {self.cfg.split: files}, "split": self.cfg.split, "streaming": True}

    def _error(self, error: BaseException) -> CodepmpError:
        if isinstance(error, CodepmpError):
            return error
        message = f"hf dataset {self.name} cannot be read: {_one_line(error)}"
        return ServiceError(message) if _is_connection_error(error) else InputError(message)

    def _open(self) -> Any:
        arguments = self.load_arguments()
        try:
            from datasets import load_dataset

            return load_dataset(**arguments)
        except Exception as e:  # noqa: BLE001 - any library failure becomes one line naming the dataset
            raise self._error(e) from None

    def check_columns(self, columns: Iterable[str]) -> None:
        """Raise InputError naming the first configured column that is not among `columns`."""
        present = list(columns)
        for column, field in self.required_columns().items():
            if column not in present:
                raise InputError(
                    f"hf dataset {self.name} has no column {column!r} (hub.{field}); "
                    f"its columns: {', '.join(present) or 'none'}"
                )

    def _rows(self) -> Iterator[Mapping[str, Any]]:
        dataset = self._open()
        if dataset.column_names is not None:
            self.check_columns(dataset.column_names)
        rows = iter(dataset)
        n_rows = 0
        while self.cfg.max_rows <= 0 or n_rows < self.cfg.max_rows:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - streaming reads files lazily, so errors surface here
                raise self._error(e) from None
            if n_rows == 0:
                self.check_columns(row.keys())
            n_rows += 1
            yield row

    def license_of(self, row: Mapping[str, Any]) -> tuple[str | None, bool]:
        """(the row's license, whether it is allowed): the first allowed id, else the first id found."""
        if not self.cfg.license_field:
            return None, True
        ids = _license_ids(row[self.cfg.license_field])
        if self.licenses is None:
            return (ids[0] if ids else None), True
        allowed = [spdx for spdx in ids if spdx.lower() in self.licenses]
        if allowed:
            return allowed[0], True
        return (ids[0] if ids else None), False

    def entry(self, row: Mapping[str, Any]) -> Entry:
        """One row as an Entry (skip="license" when its licenses are all outside `licenses`)."""
        data = _as_bytes(row[self.cfg.content_field], self.cfg.content_field, self.name)
        path = row[self.cfg.path_field]
        repo = row[self.cfg.repo_field] if self.cfg.repo_field else None
        license_id, allowed = self.license_of(row)
        return Entry(
            path="" if path is None else str(path),
            size=len(data),
            skip=None if allowed else "license",
            read=_reader(data) if allowed else _unreadable,
            repo=None if repo is None else str(repo),
            license=license_id,
        )

    def entries(self) -> Iterator[Entry]:
        """The dataset's rows as Entries, at most `max_rows` of them (0: all), in the dataset's order.

        Raises InputError for a missing column, folder or dataset, ServiceError when the Hub cannot be
        reached; both with a one-line message.
        """
        for row in self._rows():
            yield self.entry(row)
