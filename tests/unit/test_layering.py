"""The stage packages are siblings: none imports another (what two stages share lives below them), and the
shared modules below import no stage. Read from the source, function-local imports included."""

import ast
from pathlib import Path

import codepmp

PACKAGE = Path(codepmp.__file__).parent
STAGES = ("crawl", "synthesize", "train", "reasoning", "evaluate")
SHARED = ("pairs", "encoding", "shards", "generate", "models", "storage", "atomic", "errors", "progress", "config",
          "env", "retry", "tracking", "processes")


def imported_packages(path: Path) -> set[str]:
    """The codepmp subpackages or modules that the file at `path` imports anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name.split(".")[1] for name in names if name.startswith("codepmp.") and name.count(".") >= 1)
    return found


def owner(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_imported_packages_sees_top_level_and_function_local_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import codepmp.train.loop\nfrom codepmp import pairs\n"
                      "def f():\n    from codepmp.reasoning.build import x\n")
    assert imported_packages(source) == {"train", "pairs", "reasoning"}


def test_no_stage_package_imports_another():
    crossings = [f"{path.relative_to(PACKAGE)} imports codepmp.{target}"
                 for stage in STAGES for path in sorted((PACKAGE / stage).rglob("*.py"))
                 for target in sorted(imported_packages(path)) if target in STAGES and target != stage]
    assert crossings == []


def test_shared_modules_import_no_stage():
    files = [path for name in SHARED for path in ([PACKAGE / f"{name}.py"] if (PACKAGE / f"{name}.py").exists()
                                                  else sorted((PACKAGE / name).rglob("*.py")))]
    assert len(files) >= len(SHARED)
    crossings = [f"{path.relative_to(PACKAGE)} imports codepmp.{target}"
                 for path in files for target in sorted(imported_packages(path) & set(STAGES))]
    assert crossings == []
