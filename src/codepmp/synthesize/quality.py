"""Quality signals stored next to each pair, so training can filter without re-synthesizing.

Whether an implementation parses as code in its file's language: Python through `ast` (the reference parser),
JavaScript, TypeScript, Java, C, C++, Go and Rust through tree-sitter grammars (error-tolerant parsers: a tree
with an ERROR or MISSING node counts as not parsing). Other languages give None: unknown, not false.
Models usually wrap code in Markdown fences; then the fenced blocks are what is parsed.
"""

from __future__ import annotations

import ast
import functools
import re
import warnings

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)

_GRAMMARS = {
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
}
PARSED_LANGUAGES = frozenset({"python", *_GRAMMARS})


def code_of(text: str) -> str:
    """The fenced code blocks of a model answer joined, or the whole answer when it has none."""
    blocks = _FENCE.findall(text)
    return "\n".join(blocks) if blocks else text


@functools.cache
def _parser(language: str):
    import importlib

    import tree_sitter

    module, attr = _GRAMMARS[language]
    return tree_sitter.Parser(tree_sitter.Language(getattr(importlib.import_module(module), attr)()))


def parses(text: str, language: str) -> bool | None:
    """Whether the code in `text` parses as `language`; None when this language has no parser here."""
    code = code_of(text)
    if language == "python":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in model output are not our concern
                ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False
        return True
    if language not in _GRAMMARS:
        return None
    return not _parser(language).parse(code.encode("utf-8", "replace")).root_node.has_error


def signals(text: str, tokens: int, language: str, side: str) -> dict:
    """The quality columns of one side ("chosen" or "rejected") of a pair."""
    return {f"{side}_chars": len(text), f"{side}_tokens": tokens, f"{side}_parses": parses(text, language)}
