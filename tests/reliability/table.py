"""Print the reliability figures from the suite's results file.

    .venv/bin/python tests/reliability/table.py [build/reliability/results.jsonl]

Exits non-zero when the file is missing or empty, a fault was not survived, a bad input got no clear error,
a security check failed, or any row was lost.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def summarise(rows: list[dict]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"tried": 0, "ok": 0, "rows_lost": 0})
    for row in rows:
        entry = totals[row["kind"]]
        entry["tried"] += 1
        entry["ok"] += int(row["ok"])
        entry["rows_lost"] += row["rows_lost"]
    return dict(totals)


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "build/reliability/results.jsonl")
    if not path.exists() or not path.read_text().strip():
        print(f"no reliability results in {path}: run `make reliability`", file=sys.stderr)
        return 1
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    totals = summarise(rows)
    labels = {"fault": ("faults injected", "survived"), "bad_input": ("bad inputs tried", "clear errors given"),
              "security": ("security checks", "held")}
    print(f"| {'what':<18} | {'tried':>5} | {'ok':>5} | {'ok means':<18} | {'rows lost':>9} |")
    print(f"|{'-' * 20}|{'-' * 7}|{'-' * 7}|{'-' * 20}|{'-' * 11}|")
    for kind, (label, meaning) in labels.items():
        t = totals.get(kind, {"tried": 0, "ok": 0, "rows_lost": 0})
        print(f"| {label:<18} | {t['tried']:>5} | {t['ok']:>5} | {meaning:<18} | {t['rows_lost']:>9} |")
    failed = [row for row in rows if not row["ok"] or row["rows_lost"]]
    for row in failed:
        print(f"FAILED {row['kind']}: {row['what']} ({row['test']}) {row['detail']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
