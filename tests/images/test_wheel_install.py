"""The images install codepmp from a built wheel, not editable: every module and data file the CLI needs
must be in that wheel, or `codepmp compile` fails in the image while it passes in a checkout.

    .venv/bin/python -m pytest -q tests/images/test_wheel_install.py

images/cpu/Dockerfile copies the sources to /tmp/codepmp and runs `pip install --no-deps /tmp/codepmp`.
These tests do the same: they copy what the Dockerfile's COPY lines name (filtered by .dockerignore), install
it with the Dockerfile's pip options into a fresh venv, and run the console script from a scratch directory,
so neither an editable install nor the working directory can supply a module the wheel lacks. Without
network, the build uses --no-build-isolation, and the fresh venv sees the dependencies of the venv running
pytest through a folder of links that leaves out that venv's own codepmp install.

The repository's top-level components/ and pipelines/ folders install as codepmp_kfp.components and
codepmp_kfp.pipelines (setup.py's package_dir), never as top-level packages of those names.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "cpu" / "Dockerfile"
INSTALL_ROOT = "/tmp/codepmp"
PACKAGE_ROOTS = {"src": "", "components": "codepmp_kfp/components", "pipelines": "codepmp_kfp/pipelines"}
"""Source folder in the build copy -> where its files land in site-packages (setup.py's package_dir)."""
NOT_READ_AT_RUN_TIME = ("README.md", "test_*.py", "conftest.py")
"""Docs and the components' own tests may ship or not; every other file under the package roots must."""

HAND_LIST_BEFORE_DISCOVERY = [
    "codepmp", "codepmp.crawl", "codepmp.synthesize", "codepmp.train", "codepmp.evaluate", "codepmp.reasoning",
    "codepmp_kfp", "codepmp_kfp.components", "codepmp_kfp.components.crawl", "codepmp_kfp.components.crawl_merge",
    "codepmp_kfp.components.synthesize", "codepmp_kfp.components.synthesize_merge",
    "codepmp_kfp.components.base_model", "codepmp_kfp.components.reasoning_data", "codepmp_kfp.components.pretrain",
    "codepmp_kfp.components.finetune", "codepmp_kfp.components.evaluate", "codepmp_kfp.components.register",
    "codepmp_kfp.pipelines",
]
"""The package list pyproject.toml had before it used discovery, under today's names: the images it built could
not compile the pipeline."""


def dockerfile_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY into INSTALL_ROOT, as the Dockerfile writes them."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    copies = []
    for line in text.splitlines():
        if not re.match(r"\s*COPY\s", line, re.IGNORECASE):
            continue
        args = [w for w in shlex.split(line)[1:] if not w.startswith("--")]
        if len(args) >= 2 and args[-1].startswith(INSTALL_ROOT):
            copies.append((args[:-1], args[-1]))
    return copies


def dockerfile_pip_options() -> list[str]:
    """Options of the Dockerfile's `pip install ... /tmp/codepmp`, so the test installs the way the image does."""
    match = re.search(rf"pip install ((?:--\S+ )*){re.escape(INSTALL_ROOT)}(?:\s|$)", DOCKERFILE.read_text())
    assert match, f"{DOCKERFILE} no longer runs `pip install [options] {INSTALL_ROOT}`: update this test"
    return match.group(1).split()


def dockerignored_names() -> list[str]:
    """Name patterns that .dockerignore keeps out of every folder the build context lets in (`**/NAME`)."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line[3:].rstrip("/") for line in lines if line.startswith("**/") and len(line) > 3]


def copy_as_dockerfile(target: Path) -> None:
    """Docker's COPY: a folder's contents go to the destination, a file to dest/ or to the named path."""
    ignore = shutil.ignore_patterns(*dockerignored_names())
    for sources, destination in dockerfile_copies():
        dest = target / Path(destination).relative_to(INSTALL_ROOT)
        for source in sources:
            path = REPO / source
            if path.is_dir():
                shutil.copytree(path, dest, ignore=ignore, dirs_exist_ok=True)
            else:
                file_dest = dest / path.name if destination.endswith("/") else dest
                file_dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, file_dest)


def expected_installed_files(sources: Path) -> set[str]:
    """site-packages-relative paths of the files under the package roots of the build copy that must be installed."""
    patterns = dockerignored_names()
    expected = set()
    for root, prefix in PACKAGE_ROOTS.items():
        for path in (sources / root).rglob("*"):
            relative = path.relative_to(sources / root)
            if (path.is_file() and not any(fnmatch.fnmatch(path.name, p) for p in NOT_READ_AT_RUN_TIME)
                    and not any(fnmatch.fnmatch(part, p) for part in relative.parts for p in patterns)):
                expected.add(str(Path(prefix) / relative))
    return expected


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{shlex.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def clean_env() -> dict[str, str]:
    """No variable that could put the checkout or the test's venv ahead of the fresh venv; pip stays offline."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP") and not k.startswith("PIP_")}
    return {**env, "PIP_NO_INDEX": "1", "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def link_dependencies(farm: Path) -> None:
    """Links to everything in the running venv's site-packages but its codepmp: no .pth (the editable
    finder lives in one), no codepmp dist-info (pip would see codepmp as installed already)."""
    farm.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        name = entry.name
        # components and pipelines: the top-level packages that installs from before codepmp_kfp left behind.
        if (name.endswith(".pth") or name.startswith("__editable__")
                or name in ("codepmp", "codepmp_kfp", "components", "pipelines")
                or re.match(r"codepmp-[^-]+\.(dist|egg)-info$", name)):
            continue
        (farm / name).symlink_to(entry)


@pytest.fixture(scope="module")
def image_sources(tmp_path_factory) -> Path:
    sources = tmp_path_factory.mktemp("image") / "codepmp"
    copy_as_dockerfile(sources)
    assert (sources / "pyproject.toml").is_file() and (sources / "src").is_dir(), (
        f"{DOCKERFILE} no longer copies pyproject.toml and src/ to {INSTALL_ROOT}")
    return sources


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory, image_sources) -> Path:
    """A venv with the wheel installed as the Dockerfile installs it, and the dependencies linked in."""
    base = tmp_path_factory.mktemp("venv")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base, env=clean_env())
    link_dependencies(base / "dependencies")
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
               cwd=base, env=clean_env()).stdout.strip()
    # A path line in a .pth is appended to sys.path as is; the .pth files in that folder are not read.
    (Path(site) / "codepmp-test-dependencies.pth").write_text(f"{base / 'dependencies'}\n")
    run([str(python), "-m", "pip", "install", "--quiet", "--no-build-isolation", *dockerfile_pip_options(),
         str(image_sources)], cwd=base, env=clean_env())
    return venv


def installed_site(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def test_imports_come_from_the_installed_wheel(image_venv, tmp_path):
    """What the later tests run is the wheel, not the checkout or the editable install of the test's venv."""
    probe = ("import codepmp, codepmp_kfp.components.pretrain_trainjob, codepmp_kfp.components.sample_efficiency\n"
             "import codepmp_kfp.pipelines.pipeline\n"
             "from codepmp_kfp import components, pipelines\n"
             "for m in (codepmp, components, pipelines): print(m.__file__)")
    out = run([str(image_venv / "bin" / "python"), "-c", probe], cwd=tmp_path, env=clean_env()).stdout.split()
    site = installed_site(image_venv).resolve()
    assert len(out) == 3 and all(Path(f).resolve().is_relative_to(site) for f in out), out


def test_no_top_level_components_or_pipelines(image_venv, tmp_path):
    """Installed under codepmp_kfp only: a top-level `components` or `pipelines` would shadow, or be shadowed by,
    any other distribution's package of that name."""
    probe = "import importlib.util\nprint([n for n in ('components', 'pipelines') if importlib.util.find_spec(n)])"
    out = run([str(image_venv / "bin" / "python"), "-c", probe], cwd=tmp_path, env=clean_env()).stdout.strip()
    assert out == "[]"
    assert not {"components", "pipelines"} & {p.name for p in installed_site(image_venv).iterdir()}


def test_wheel_carries_every_module_and_data_file(image_venv, image_sources):
    site = installed_site(image_venv)
    installed = {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}
    assert expected_installed_files(image_sources) - installed == set()


def test_help(image_venv, tmp_path):
    out = run([str(image_venv / "bin" / "codepmp"), "--help"], cwd=tmp_path, env=clean_env()).stdout
    assert "compile" in out and "submit" in out


@pytest.mark.parametrize("pretrain_nodes", [1, 2])
def test_compile(image_venv, tmp_path, pretrain_nodes):
    """pretrain_nodes: 2 swaps the pretrain task for the TrainJob one; both compile from the installed wheel."""
    spec = tmp_path / "cluster.yaml"
    spec.write_text(f"pretrain_nodes: {pretrain_nodes}\n")
    out = tmp_path / "p.yaml"
    run([str(image_venv / "bin" / "codepmp"), "compile", "--out", str(out), "--cluster-spec", str(spec)],
        cwd=tmp_path, env=clean_env())
    pipeline = next(yaml.safe_load_all(out.read_text()))
    assert pipeline["pipelineInfo"]["name"] == "codepmp"
    tasks = set(pipeline["root"]["dag"]["tasks"])
    pretrain = "pretrain-trainjob" if pretrain_nodes > 1 else "pretrain"
    assert {pretrain, "sample-efficiency", "finetune", "evaluate", "register"} <= tasks, sorted(tasks)


def build_wheel(sources: Path, out: Path) -> set[str]:
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out),
         str(sources)], cwd=out, env=clean_env())
    with zipfile.ZipFile(next(out.glob("codepmp-*.whl"))) as wheel:
        return set(wheel.namelist())


def test_the_old_hand_list_fails_the_file_check(image_sources, tmp_path):
    """The check above catches what broke the images: built from the old list, the wheel lacks the two component
    packages (and every package added since, such as codepmp.generate: a hand list misses each new one)."""
    sources = tmp_path / "codepmp"
    shutil.copytree(image_sources, sources, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    setup_py = sources / "setup.py"
    assert "setup(packages=discovered_packages()" in setup_py.read_text(), "setup.py's layout changed: update this test"
    package_dir = {prefix.replace("/", "."): root for root, prefix in PACKAGE_ROOTS.items()}
    setup_py.write_text("from setuptools import setup\n\n"
                        f"setup(packages={HAND_LIST_BEFORE_DISCOVERY!r}, package_dir={package_dir!r})\n")
    (tmp_path / "dist").mkdir()
    missing = expected_installed_files(sources) - build_wheel(sources, tmp_path / "dist")
    missing_folders = {str(Path(p).parent) for p in missing}
    assert {"codepmp_kfp/components/pretrain_trainjob", "codepmp_kfp/components/sample_efficiency"} <= missing_folders
