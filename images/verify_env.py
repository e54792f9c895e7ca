"""Fail an image build unless every installed distribution has exactly the version a lock file pins.

    python verify_env.py LOCK [LOCK ...] [--partial] [--unpinned NAME ...]

A later lock wins over an earlier one (the GPU image lays images/gpu/requirements-vllm.lock over
requirements.lock). A local version label is ignored, so torch 2.13.0+cu130 matches torch==2.13.0.
--unpinned names may be installed at any version (the project itself, pip's own tooling). Without --partial,
every pinned package must also be installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata

PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(texts: list[tuple[str, str]]) -> dict[str, str]:
    """(path, text) pairs -> canonical name: version; anything but `name==version` lines and comments is an error."""
    pins: dict[str, str] = {}
    for path, text in texts:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            match = PIN.fullmatch(line)
            if match is None:
                raise ValueError(f"{path}: not an exact pin: {line!r}")
            pins[canonical(match[1])] = match[2]
    return pins


def problems(installed: dict[str, str], pins: dict[str, str], unpinned: set[str], partial: bool) -> list[str]:
    found = []
    for name, version in sorted(installed.items()):
        if name in unpinned:
            continue
        want = pins.get(name)
        if want is None:
            found.append(f"{name} {version} is installed but no lock pins it")
        elif version.split("+")[0] != want.split("+")[0]:
            found.append(f"{name} {version} is installed but the lock pins {want}")
    if not partial:
        found += [f"{name}=={pins[name]} is pinned but not installed"
                  for name in sorted(set(pins) - set(installed) - unpinned)]
    return found


def installed_distributions() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("locks", nargs="+")
    parser.add_argument("--partial", action="store_true", help="pinned packages need not all be installed")
    parser.add_argument("--unpinned", nargs="*", default=[], help="distributions allowed at any version")
    args = parser.parse_args(argv)
    try:
        pins = parse_pins([(p, open(p).read()) for p in args.locks])
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    found = problems(installed_distributions(), pins, {canonical(n) for n in args.unpinned}, args.partial)
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
