"""Jupyter notebooks (.ipynb) to plain code, with the json standard library only.

    from codepmp.crawl.notebooks import NotebookError, convert_notebook
    notebook = convert_notebook(text)          # raises NotebookError for text that is not a notebook
    notebook.language, notebook.code           # "python", "import numpy as np\\n\\nx = np.ones(3)\\n"

The Stack ships notebooks as JSON and StarCoder trained on them converted to scripts (Jupytext) or
to markdown/code/output triplets. Here a notebook becomes the source of its code cells, in order,
separated by one blank line, so that every later filter (line lengths, alphanumeric fraction, data
detection) measures code in the kernel's language and nothing else:

* Markdown and raw cells are dropped, not kept as comments. Markdown paragraphs are single lines of
  hundreds of characters and often inline base64 images, which would trip the line-length filters on
  notebooks whose code is fine, and prose is not what the crawl is after.
* Outputs are dropped: they are results (tables, images, tracebacks), not code.
* For Python kernels, IPython-only syntax is made valid Python the way Jupytext does: line magics
  (`%matplotlib inline`) and shell escapes (`!pip install x`) become comments, a cell magic that
  keeps the cell Python (`%%time`) becomes a comment, and a cell whose magic switches language
  (`%%bash`, `%%html`, `%%writefile`) is dropped.

Both the current format (nbformat 4: `cells[].source`) and the old one (nbformat 3:
`worksheets[].cells[].input`) are read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

NOTEBOOK_EXTENSION = ".ipynb"

KERNEL_LANGUAGES: dict[str, str] = {
    "python": "python", "ipython": "python", "pypy": "python", "xpython": "python",
    "javascript": "javascript", "node": "javascript", "nodejs": "javascript", "ijavascript": "javascript",
    "deno": "typescript", "typescript": "typescript", "tslab": "typescript",
    "java": "java", "ijava": "java",
    "c": "c",
    "c++": "cpp", "cpp": "cpp", "xcpp": "cpp",
    "c#": "csharp", "csharp": "csharp", ".net-csharp": "csharp",
    "go": "go", "gophernotes": "go",
    "rust": "rust", "evcxr": "rust",
    "ruby": "ruby", "iruby": "ruby",
    "php": "php",
    "kotlin": "kotlin",
    "scala": "scala", "almond": "scala",
    "swift": "swift",
    "lua": "lua",
    "bash": "shell", "sh": "shell", "shell": "shell", "zsh": "shell",
}
"""Lower-case kernel or `language_info` name (trailing version digits removed: "python3", "scala212",
"C++17") -> crawl language. Kernels not listed (R, Julia, SQL, ...) have no crawl language."""

DEFAULT_LANGUAGE = "python"
"""Language of a notebook that names none: nbformat 3 notebooks were IPython-only, and Jupyter's default
kernel (ipykernel) is Python, so unlabelled notebooks are Python in practice."""

PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug", "skip"})
"""Cell magics whose body is still Python; any other cell magic (`%%bash`, `%%html`, ...) drops the cell."""

_IPYTHON_LINE = re.compile(r"^([ \t]*)(?=%|!(?!=))", re.MULTILINE)


class NotebookError(ValueError):
    """The text is not a notebook: invalid JSON or not the nbformat structure."""


@dataclass(frozen=True)
class Notebook:
    language: str | None
    """Crawl language of the kernel, or None for a kernel without one (R, Julia, ...)."""
    kernel: str
    """The kernel language as the notebook names it (lower case), for messages and stats."""
    code: str
    """Code cells in order, each stripped of trailing whitespace, separated by one blank line; "" if none."""


def convert_notebook(text: str) -> Notebook:
    """The notebook in `text` as code in its kernel's language; raises NotebookError when it is not one."""
    notebook = _load(text)
    kernel = kernel_name(notebook)
    language = kernel_language(kernel)
    cells = [_cell_code(source, language) for source in code_cell_sources(notebook)]
    code = "\n\n".join(cell for cell in cells if cell)
    return Notebook(language, kernel, code + "\n" if code else "")


def _load(text: str) -> dict[str, Any]:
    try:
        notebook = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise NotebookError(f"not valid JSON: {e}") from None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells", notebook.get("worksheets")), list):
        raise NotebookError("not a Jupyter notebook: no cells")
    return notebook


def kernel_name(notebook: dict[str, Any]) -> str:
    """The notebook's language as it names it, lower case: kernelspec language, then language_info, then the
    kernel's own name, then nbformat 3 fields; DEFAULT_LANGUAGE when it names none."""
    metadata = notebook.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    kernelspec = metadata.get("kernelspec")
    kernelspec = kernelspec if isinstance(kernelspec, dict) else {}
    info = metadata.get("language_info")
    info = info if isinstance(info, dict) else {}
    for name in (kernelspec.get("language"), info.get("name"), kernelspec.get("name"), metadata.get("language")):
        if isinstance(name, str) and name.strip():
            return name.strip().lower()
    return DEFAULT_LANGUAGE


def kernel_language(kernel: str) -> str | None:
    """Crawl language of a kernel name: exact match in KERNEL_LANGUAGES, else without a version suffix."""
    name = kernel.strip().lower()
    return KERNEL_LANGUAGES.get(name) or KERNEL_LANGUAGES.get(name.rstrip("0123456789."))


def code_cell_sources(notebook: dict[str, Any]) -> Iterator[str]:
    """Source text of each code cell in order (nbformat 4 `cells`, or nbformat 3 `worksheets[].cells`)."""
    if "cells" in notebook:
        groups, field = [notebook["cells"]], "source"
    else:
        groups = [sheet.get("cells") if isinstance(sheet, dict) else None for sheet in notebook["worksheets"]]
        field = "input"
    for cells in groups:
        if not isinstance(cells, list):
            raise NotebookError("not a Jupyter notebook: cells is not a list")
        for cell in cells:
            if not isinstance(cell, dict):
                raise NotebookError("not a Jupyter notebook: a cell is not an object")
            if cell.get("cell_type") == "code":
                yield _source_text(cell.get(field, ""))


def _source_text(source: Any) -> str:
    """nbformat stores a source as one string or as a list of lines that keep their newlines."""
    if isinstance(source, str):
        return source
    if isinstance(source, list) and all(isinstance(line, str) for line in source):
        return "".join(source)
    raise NotebookError("not a Jupyter notebook: a cell source is not text")


def _cell_code(source: str, language: str | None) -> str:
    code = source.rstrip()
    if language != "python" or not code:
        return code
    return ipython_to_python(code)


def ipython_to_python(code: str) -> str:
    """One Python cell's IPython syntax as comments; "" for a cell whose cell magic switches language."""
    stripped = code.lstrip()
    if stripped.startswith("%%"):
        magic = stripped[2:].split(None, 1)[0] if len(stripped) > 2 else ""
        if magic not in PYTHON_CELL_MAGICS:
            return ""
    return _IPYTHON_LINE.sub(r"\1# ", code)
