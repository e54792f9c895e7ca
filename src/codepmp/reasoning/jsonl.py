"""Strict readers for the reasoning data files: every problem is an InputError naming the file and where in it.

Public API:
    read_jsonl(path, what) -> list[Record]       non-blank lines of a JSON-lines file, each a JSON object
    read_json_array(path, what) -> list[Record]  items of a file holding one JSON array of objects
    Record.get(key, kind, optional=False)        a field of the expected type, or an InputError saying where

`what` names the format in messages ('MATH', 'LogiQA2.0', ...), so a user knows which loader complained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codepmp.errors import InputError

_MISSING = object()


@dataclass(frozen=True)
class Record:
    row: dict
    where: str
    """'<file> line <n>' (1-based) or '<file> item [<i>]' (0-based array index), used in every message."""
    position: int
    """That line number or item index."""

    def get(self, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
        """`row[key]` checked to be of `kind` (a bool never passes for an int); a missing or null field is
        None when `optional`, else an error."""
        value = self.row.get(key, _MISSING)
        if value is _MISSING or value is None:
            if optional:
                return None
            raise InputError(f"{self.where}: missing field '{key}' (fields: {', '.join(self.row) or 'none'})")
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise InputError(f"{self.where}: field '{key}' must be {names}, not {type(value).__name__}")
        return value

    def strings(self, key: str, min_items: int = 1) -> list[str]:
        """A list field whose items are all strings, with at least `min_items` of them."""
        values = self.get(key, list)
        if len(values) < min_items or not all(isinstance(v, str) for v in values):
            raise InputError(f"{self.where}: field '{key}' must be a list of at least {min_items} strings")
        return values

    def fail(self, message: str) -> InputError:
        return InputError(f"{self.where}: {message}")


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise InputError(f"{what} file '{path}' does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} file '{path}' is not UTF-8 text ({exc})") from None


def read_jsonl(path: str | Path, what: str) -> list[Record]:
    """Each non-blank line of a JSON-lines file as a Record. Lines are split on '\\n' only: JSON strings may
    hold other line separators (U+2028) that `str.splitlines` would cut at."""
    path = Path(path)
    records = []
    for number, line in enumerate(_read_text(path, what).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        records.append(Record(row, where, number))
    if not records:
        raise InputError(f"{what} file '{path}' is empty")
    return records


def read_json_array(path: str | Path, what: str) -> list[Record]:
    """Each item of a file holding one JSON array of objects, as a Record."""
    path = Path(path)
    text = _read_text(path, what)
    if not text.strip():
        raise InputError(f"{what} file '{path}' is empty")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(items, list):
        raise InputError(f"{what} file '{path}' must hold a JSON array, not a {type(items).__name__}")
    if not items:
        raise InputError(f"{what} file '{path}' is empty (an empty array)")
    records = []
    for index, item in enumerate(items):
        where = f"{path} item [{index}]"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(item).__name__}")
        records.append(Record(item, where, index))
    return records
