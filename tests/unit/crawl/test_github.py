"""GitHub crawl source against a local fake of the REST API: plan, paging, entries, retries, rate limits, bad tarballs.

    PYTHONPATH=src python -m pytest tests/unit/test_crawl_github.py -q

The fake serves the response shapes the real API answers with (search `items`, commit `sha`, a
302 from /tarball/ to a codeload-style URL) and real tarballs built with `tarfile`. No network.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import socket
import tarfile
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from codepmp.config import GitHubConfig
from codepmp.crawl import github
from codepmp.crawl.github import GitHubSource
from codepmp.crawl.sources import iter_tar_stream, iter_tarball
from codepmp.errors import InputError, ServiceError
from tests.unit.helpers import FakeTime

TOKEN = "ghp_thisIsNotARealTokenButLooksLikeOne0123"


def sha_of(name: str) -> str:
    return (name.encode().hex() * 40)[:40]


def tarball(top: str, members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    """A gzipped tarball with a top folder `top/` holding `members`, then `extra` headers as they are."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.pax_headers = {"comment": "a" * 40}
        info = tarfile.TarInfo(top)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
    return buf.getvalue()


def special(name: str, kind: bytes, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size
    return info


@dataclass
class Repo:
    full_name: str
    stars: int
    license: str | None = "MIT"
    language: str = "Python"
    default_branch: str = "main"
    files: dict[str, bytes] = field(default_factory=lambda: {"pkg/mod.py": b"print('hi')\n"})
    archive: bytes | None = None
    deleted: bool = False

    @property
    def sha(self) -> str:
        return sha_of(self.full_name)

    def tarball(self) -> bytes:
        if self.archive is not None:
            return self.archive
        owner, name = self.full_name.split("/")
        return tarball(f"{owner}-{name}-{self.sha[:7]}", self.files)


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    length: bool = True
    """Send Content-Length; without it the body runs until the connection closes, as in a chunked download."""


class FakeGitHub:
    """The slice of the REST API the source uses; `script[path_prefix]` holds canned replies served first."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.search_cap = 1000
        self.script: dict[str, list[Reply]] = {}
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        self.lock = threading.Lock()

    def add(self, *repos: Repo) -> None:
        for repo in repos:
            self.repos[repo.full_name] = repo

    def fail(self, prefix: str, *replies: Reply) -> None:
        self.script.setdefault(prefix, []).extend(replies)

    def paths(self, prefix: str = "") -> list[str]:
        return [p for p, _, _ in self.requests if p.startswith(prefix)]

    def queries(self, prefix: str) -> list[dict[str, list[str]]]:
        return [q for p, q, _ in self.requests if p.startswith(prefix)]

    def handle(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> Reply:
        with self.lock:
            self.requests.append((path, query, headers))
            for prefix, replies in self.script.items():
                if path.startswith(prefix) and replies:
                    return replies.pop(0)
        if path == "/search/repositories":
            return self.search(query)
        parts = path.strip("/").split("/")
        if parts[0] == "repos" and len(parts) >= 5:
            repo = self.repos.get(f"{parts[1]}/{parts[2]}")
            if repo is None or repo.deleted:
                return json_reply({"message": "Not Found"}, 404)
            if parts[3] == "commits":
                return json_reply({"sha": repo.sha, "commit": {"message": "x"}})
            if parts[3] == "tarball":
                return Reply(302, {"Location": f"/codeload/{repo.full_name}/legacy.tar.gz/{parts[4]}"})
        if parts[0] == "codeload":
            repo = self.repos[f"{parts[1]}/{parts[2]}"]
            return Reply(200, {"Content-Type": "application/x-gzip"}, repo.tarball())
        return json_reply({"message": "Not Found"}, 404)

    def search(self, query: dict[str, list[str]]) -> Reply:
        terms = dict(term.split(":", 1) for term in query["q"][0].split())
        stars = terms["stars"]
        low, high = (int(stars[2:]), None) if stars.startswith(">=") else map(int, stars.split(".."))
        hits = sorted((r for r in self.repos.values()
                       if r.language == terms["language"] and r.stars >= low and (high is None or r.stars <= high)),
                      key=lambda r: (-r.stars, r.full_name))
        per_page, page = int(query["per_page"][0]), int(query["page"][0])
        if page * per_page > self.search_cap:
            return json_reply({"message": "Only the first 1000 search results are available"}, 422)
        items = [{"full_name": r.full_name, "default_branch": r.default_branch, "stargazers_count": r.stars,
                  "size": len(r.full_name),
                  "language": r.language, "license": r.license and {"spdx_id": r.license, "key": r.license.lower()}}
                 for r in hits[(page - 1) * per_page:page * per_page]]
        return json_reply({"total_count": len(hits), "incomplete_results": False, "items": items})


def json_reply(body: object, status: int = 200, **headers: str) -> Reply:
    return Reply(status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode())


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urllib.parse.urlsplit(self.path)
        reply = self.server.fake.handle(url.path, urllib.parse.parse_qs(url.query), dict(self.headers))
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if reply.length and "Content-Length" not in reply.headers:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.fake = FakeGitHub()
    server.fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server.fake
    server.shutdown()
    server.server_close()
    thread.join()


def make_source(fake: FakeGitHub, time: FakeTime | None = None, languages=("python",), environ=None,
                max_archive_bytes: int = 10_000_000, max_archive_members: int = 1000, **cfg) -> GitHubSource:
    time = time or FakeTime()
    values = dict(api_url=fake.url, token_env="TEST_GITHUB_TOKEN", min_stars=10, max_repos=100, max_retries=3,
                  max_rate_limit_wait_s=600.0, timeout_s=5.0)
    values.update(cfg)
    session = requests.Session()
    session.trust_env = False  # a proxy set in the environment must not see requests to the local fake
    return GitHubSource(GitHubConfig(**values), languages=languages, max_archive_bytes=max_archive_bytes,
                        max_archive_members=max_archive_members,
                        environ={"TEST_GITHUB_TOKEN": TOKEN} if environ is None else environ,
                        sleep=time.sleep, clock=time.clock, session=session)


def crawl_all(src: GitHubSource, plan: list[dict]) -> dict[str, list]:
    return {item["repo"]: list(src.entries(item)) for item in plan}


# ---------------------------------------------------------------- plan


def test_plan_keeps_allowed_licenses_in_repo_order(fake: FakeGitHub):
    fake.add(Repo("zeta/last", 500), Repo("alpha/first", 50, license="Apache-2.0", default_branch="trunk"),
             Repo("gpl/tool", 900, license="GPL-3.0"), Repo("none/thing", 300, license=None),
             Repo("odd/one", 200, license="NOASSERTION"), Repo("few/stars", 5), Repo("js/lib", 800, language="JavaScript"))
    src = make_source(fake)
    plan = src.plan()
    assert plan == [
        {"repo": "alpha/first", "commit": sha_of("alpha/first"), "license": "Apache-2.0", "stars": 50,
         "language": "python", "default_branch": "trunk", "size_kb": 11},
        {"repo": "zeta/last", "commit": sha_of("zeta/last"), "license": "MIT", "stars": 500,
         "language": "python", "default_branch": "main", "size_kb": 9},
    ]
    assert src.skipped == {"license": 3}
    assert json.loads(json.dumps(plan)) == plan
    assert fake.paths("/repos/") == ["/repos/zeta/last/commits/main", "/repos/alpha/first/commits/trunk"]
    query = fake.queries("/search/")[0]
    assert query["q"] == ["language:Python stars:>=10"]
    assert (query["sort"], query["order"], query["per_page"], query["page"]) == (["stars"], ["desc"], ["100"], ["1"])


def test_plan_pages_until_max_repos(fake: FakeGitHub):
    fake.add(*(Repo(f"user{i:03d}/repo", 1000 + i) for i in range(250)))
    src = make_source(fake, max_repos=120)
    plan = src.plan()
    assert len(plan) == 120
    assert {p["stars"] for p in plan} == set(range(1000 + 249, 1000 + 249 - 120, -1))  # the most starred
    assert [q["page"] for q in fake.queries("/search/")] == [["1"], ["2"]]


def test_plan_stops_when_results_run_out(fake: FakeGitHub):
    fake.add(*(Repo(f"user{i}/repo", 100 + i) for i in range(7)))
    src = make_source(fake, max_repos=100)
    assert len(src.plan()) == 7
    assert len(fake.queries("/search/")) == 1


def test_plan_maps_language_names_per_language(fake: FakeGitHub):
    fake.add(Repo("a/cpp", 100, language="C++"), Repo("b/cs", 100, language="C#"), Repo("c/sh", 100, language="Shell"),
             Repo("d/py", 100))
    plan = make_source(fake, languages=["cpp", "csharp", "shell"]).plan()
    assert [(p["repo"], p["language"]) for p in plan] == [("a/cpp", "cpp"), ("b/cs", "csharp"), ("c/sh", "shell")]
    assert [q["q"][0].split()[0] for q in fake.queries("/search/")] == ["language:C++", "language:C#", "language:Shell"]


def test_plan_splits_star_ranges_past_the_search_cap(fake: FakeGitHub, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(github, "SEARCH_PER_PAGE", 4)
    monkeypatch.setattr(github, "SEARCH_RESULT_CAP", 8)
    fake.search_cap = 8
    stars = [90, 80, 70, 60, 50, 50, 50, 50, 50, 50, 40, 30, 20, 15, 12, 5]
    fake.add(*(Repo(f"u{i:02d}/r", s) for i, s in enumerate(stars)))
    src = make_source(fake, max_repos=1000)
    plan = src.plan()
    assert sorted(p["repo"] for p in plan) == [f"u{i:02d}/r" for i, s in enumerate(stars) if s >= 10]
    assert not src.skipped
    windows = [q["q"][0].split()[1] for q in fake.queries("/search/")]
    assert windows[0] == "stars:>=10" and "stars:10..50" in windows and windows[-1].startswith("stars:10..")


def test_star_split_ends_when_one_star_count_fills_the_cap(fake: FakeGitHub, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(github, "SEARCH_PER_PAGE", 2)
    monkeypatch.setattr(github, "SEARCH_RESULT_CAP", 4)
    fake.search_cap = 4
    fake.add(*(Repo(f"tie{i}/r", 50) for i in range(6)), Repo("lower/r", 40))
    plan = make_source(fake, max_repos=1000).plan()
    assert [p["stars"] for p in plan].count(50) == 4 and "lower/r" in {p["repo"] for p in plan}
    assert [q["q"][0].split()[1] for q in fake.queries("/search/")][::2] == ["stars:>=10", "stars:10..50", "stars:10..49"]


def test_deleted_repo_is_skipped_and_counted(fake: FakeGitHub):
    fake.add(Repo("gone/repo", 300, deleted=True), Repo("empty/repo", 200), Repo("kept/repo", 100))
    fake.fail("/repos/empty/repo/commits", json_reply({"message": "Git Repository is empty."}, 409))
    src = make_source(fake)
    assert [p["repo"] for p in src.plan()] == ["kept/repo"]
    assert src.skipped == {"not_found": 1, "empty": 1}


# ---------------------------------------------------------------- entries


def test_entries_strip_the_top_folder_and_carry_provenance(fake: FakeGitHub):
    files = {"setup.py": b"from setuptools import setup\n", "pkg/__init__.py": b"", "pkg/core.py": b"x = 1\n" * 50}
    fake.add(Repo("octo/cat", 100, files=files, license="BSD-3-Clause"))
    src = make_source(fake)
    [item] = src.plan()
    entries = list(src.entries(item))
    assert [e.path for e in entries] == ["setup.py", "pkg/__init__.py", "pkg/core.py"]
    assert {(e.repo, e.commit, e.license, e.skip) for e in entries} == {("octo/cat", sha_of("octo/cat"),
                                                                          "BSD-3-Clause", None)}
    assert [e.size for e in entries] == [len(d) for d in files.values()]
    contents = [e.read(1000) for e in src.entries(item)]
    assert contents == [files["setup.py"], b"", (b"x = 1\n" * 50)]
    assert fake.paths("/repos/octo/cat/tarball/") == [f"/repos/octo/cat/tarball/{sha_of('octo/cat')}"] * 2


def test_entries_of_a_repo_deleted_after_planning(fake: FakeGitHub):
    fake.add(Repo("soon/gone", 100))
    src = make_source(fake)
    [item] = src.plan()
    fake.repos["soon/gone"].deleted = True
    assert list(src.entries(item)) == []
    assert src.skipped == {"not_found": 1}


def test_headers_sent_and_token_never_leaks(fake: FakeGitHub, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    fake.add(Repo("octo/cat", 100))
    src = make_source(fake, max_retries=2)
    plan = src.plan()
    crawl_all(src, plan)
    for _, _, headers in fake.requests:
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        assert headers["Accept"] == "application/vnd.github+json"
        assert headers["X-GitHub-Api-Version"] == "2022-11-28"
        assert headers["User-Agent"]
    fake.fail("/search/", *[Reply(503)] * 2)
    with pytest.raises(ServiceError) as failed:
        src.plan()
    fake.fail("/search/", json_reply({"message": "Bad credentials"}, 401))
    with pytest.raises(ServiceError) as refused:
        src.plan()
    assert "TEST_GITHUB_TOKEN" in str(refused.value) and "refused" in str(refused.value)
    for text in (caplog.text, str(failed.value), str(refused.value), repr(src)):
        assert TOKEN not in text
        assert TOKEN[4:12] not in text


def test_no_token_sends_no_authorization(fake: FakeGitHub, caplog: pytest.LogCaptureFixture):
    fake.add(Repo("octo/cat", 100))
    make_source(fake, environ={}).plan()
    assert all("Authorization" not in headers for _, _, headers in fake.requests)
    assert "TEST_GITHUB_TOKEN" in caplog.text


# ---------------------------------------------------------------- retries and rate limits


def test_rate_limit_sleeps_until_reset_then_succeeds(fake: FakeGitHub):
    time = FakeTime()
    fake.add(Repo("octo/cat", 100))
    fake.fail("/search/", json_reply({"message": "API rate limit exceeded"}, 403, **{
        "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.now) + 2)}))
    plan = make_source(fake, time).plan()
    assert [p["repo"] for p in plan] == ["octo/cat"]
    assert time.sleeps == [3.0]
    assert len(fake.queries("/search/")) == 2


def test_retry_after_is_honoured(fake: FakeGitHub):
    time = FakeTime()
    fake.add(Repo("octo/cat", 100))
    fake.fail("/repos/octo/cat/commits", json_reply({"message": "secondary rate limit"}, 429, **{"Retry-After": "7"}))
    assert len(make_source(fake, time).plan()) == 1
    assert time.sleeps == [7.0]


def test_rate_limit_wait_above_the_maximum_is_an_error(fake: FakeGitHub):
    time = FakeTime()
    fake.fail("/search/", json_reply({"message": "API rate limit exceeded"}, 403, **{
        "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.now) + 5000)}))
    with pytest.raises(ServiceError, match="max_rate_limit_wait_s"):
        make_source(fake, time, max_rate_limit_wait_s=60).plan()
    assert time.sleeps == []


def test_server_error_is_retried(fake: FakeGitHub):
    time = FakeTime()
    fake.add(Repo("octo/cat", 100))
    fake.fail("/search/", Reply(500))
    fake.fail("/codeload/", Reply(502))
    src = make_source(fake, time)
    [item] = src.plan()
    assert [e.path for e in src.entries(item)] == ["pkg/mod.py"]
    assert time.sleeps == [1.0, 1.0]


def test_persistent_server_error_is_a_service_error(fake: FakeGitHub):
    time = FakeTime()
    fake.fail("/search/", *[Reply(500)] * 10)
    with pytest.raises(ServiceError, match=r"/search/repositories failed after 3 attempts.*HTTP 500"):
        make_source(fake, time, max_retries=3).plan()
    assert len(fake.requests) == 3
    assert time.sleeps == [1.0, 2.0]


def test_connection_errors_are_retried_then_reported(fake: FakeGitHub):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    time = FakeTime()
    fake.url = f"http://127.0.0.1:{port}"
    with pytest.raises(ServiceError, match=f"127.0.0.1:{port}/search/repositories failed after 2 attempts.*Connection"):
        make_source(fake, time, max_retries=2).plan()
    assert time.sleeps == [1.0]


# ---------------------------------------------------------------- archives


def test_bad_tarballs_become_one_entry_and_the_crawl_goes_on(fake: FakeGitHub, caplog: pytest.LogCaptureFixture):
    good = Repo("a/good", 300, files={"ok.py": b"ok = True\n"})
    whole = tarball("b-cut-1234567", {f"m{i}.py": os.urandom(3000) for i in range(20)})
    fake.add(good, Repo("b/cut", 200, archive=whole[: len(whole) // 2]), Repo("c/junk", 100, archive=b"<html>" * 99))
    src = make_source(fake)
    result = crawl_all(src, src.plan())
    assert [e.path for e in result["a/good"]] == ["ok.py"]
    for repo in ("b/cut", "c/junk"):
        [bad] = result[repo]
        assert (bad.path, bad.size, bad.skip, bad.repo, bad.commit, bad.license) == (
            f"{repo}.tar.gz", 0, "bad_archive", repo, sha_of(repo), "MIT")
        with pytest.raises(OSError):
            bad.read(10)
        assert f"GitHub tarball of {repo}@" in caplog.text


def test_unsafe_members_are_skipped_and_nothing_is_written(fake: FakeGitHub, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    top = "evil-repo-1234567"
    archive = tarball(top, {"fine.py": b"fine = 1\n"}, extra=[
        special("../evil.py", tarfile.REGTYPE, size=10),
        special(f"{top}/../../evil2.py", tarfile.REGTYPE, size=10),
        special("/tmp/evil3.py", tarfile.REGTYPE, size=10),
        special(f"{top}/back\\slash.py", tarfile.REGTYPE, size=10),
        special(f"{top}/link.py", tarfile.SYMTYPE, linkname="/etc/passwd"),
        special(f"{top}/hard.py", tarfile.LNKTYPE, linkname=f"{top}/fine.py"),
        special(f"{top}/dev.py", tarfile.CHRTYPE),
    ])
    fake.add(Repo("evil/repo", 100, archive=archive))
    src = make_source(fake)
    entries = crawl_all(src, src.plan())["evil/repo"]
    assert [(e.path, e.skip) for e in entries] == [
        ("fine.py", None),
        ("../evil.py", "unsafe_path"), (f"{top}/../../evil2.py", "unsafe_path"), ("/tmp/evil3.py", "unsafe_path"),
        (f"{top}/back\\slash.py", "unsafe_path"),
        ("link.py", "not_regular"), ("hard.py", "not_regular"), ("dev.py", "not_regular"),
    ]
    for entry in entries[1:]:
        with pytest.raises(OSError):
            entry.read(100)
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent / "evil.py").exists() and not Path("/tmp/evil3.py").exists()


@pytest.mark.parametrize("caps", [{"max_archive_members": 3}, {"max_archive_bytes": 5000}])
def test_tarball_over_the_caps_is_a_bad_archive(fake: FakeGitHub, caps: dict[str, int]):
    big = {f"f{i}.py": b"# padding\n" * 200 for i in range(5)}
    fake.add(Repo("big/repo", 200, files=big), Repo("small/repo", 100))
    src = make_source(fake, **caps)
    result = crawl_all(src, src.plan())
    assert [(e.path, e.skip) for e in result["big/repo"]] == [("big/repo.tar.gz", "bad_archive")]
    assert [e.path for e in result["small/repo"]] == ["pkg/mod.py"]


def test_download_over_the_byte_cap_is_a_bad_archive(fake: FakeGitHub, caplog: pytest.LogCaptureFixture):
    fake.add(Repo("big/repo", 100, files={"a.py": os.urandom(20_000)}))
    src = make_source(fake, max_archive_bytes=10_000)
    [item] = src.plan()
    fake.fail("/codeload/", Reply(200, {}, b"\x1f\x8b" + b"\0" * 20_000, length=False))
    assert [e.skip for e in src.entries(item)] == ["bad_archive"]
    assert "is more than max_archive_bytes=10000 bytes" in caplog.text
    fake.fail("/codeload/", Reply(200, {"Content-Length": "99999999999"}, b""))
    assert [e.skip for e in src.entries(item)] == ["bad_archive"]
    assert "is 99999999999 bytes, more than max_archive_bytes=10000" in caplog.text


# ---------------------------------------------------------------- tar streams (shared with local tarballs)


def test_tar_stream_from_a_file_object_strips_components(tmp_path: Path):
    data = tarball("top-dir", {"a.py": b"a = 1\n", "sub/b.py": b"b = 2\n"}, extra=[special("stray.py", tarfile.REGTYPE)])
    entries = list(iter_tar_stream(io.BytesIO(data), strip_components=1))
    assert [(e.path, e.read(100)) for e in iter_tar_stream(io.BytesIO(data), strip_components=1)] == [
        ("a.py", b"a = 1\n"), ("sub/b.py", b"b = 2\n")]
    assert [e.path for e in entries] == ["a.py", "sub/b.py"]
    path = tmp_path / "plain.tar"
    path.write_bytes(gzip.decompress(data))
    assert [e.path for e in iter_tarball(str(path))] == ["top-dir/a.py", "top-dir/sub/b.py", "stray.py"]


def test_tar_stream_caps_and_corruption_are_input_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = tarball("t", {f"{i}.py": os.urandom(600) for i in range(4)})
    with pytest.raises(InputError, match="more than 3 members"):
        list(iter_tar_stream(io.BytesIO(data), label="test archive", max_members=3))
    with pytest.raises(InputError, match="test archive has members adding up to more than 1000 bytes"):
        list(iter_tar_stream(io.BytesIO(data), label="test archive", max_bytes=1000))
    with pytest.raises(InputError, match="test archive is not a readable tarball"):
        list(iter_tar_stream(io.BytesIO(data[:1500]), label="test archive"))
    with pytest.raises(InputError, match="tar stream is not a readable tarball"):
        list(iter_tar_stream(io.BytesIO(b"not a tarball at all" * 50)))
    path = tmp_path / "t.tar.gz"
    path.write_bytes(data)
    monkeypatch.setattr("codepmp.crawl.sources.MAX_TAR_MEMBERS", 2)
    with pytest.raises(InputError, match=f"crawl source {path} has more than 2 members"):
        list(iter_tarball(str(path)))


def test_huge_long_name_header_is_refused_before_it_is_read():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("d/" + "x" * 2_000_000 + ".py")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(InputError, match="decompresses to more than"):
        list(iter_tar_stream(io.BytesIO(buf.getvalue()), label="long", max_members=2, max_bytes=1000))


# ---------------------------------------------------------------- the crawl stage over the github source


def test_crawl_over_github_plans_once_and_resumes_without_downloading(fake: FakeGitHub, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    from codepmp.config import CrawlConfig, DecontamConfig
    from codepmp.crawl import read_shards, run_crawl

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TEST_GITHUB_TOKEN", TOKEN)

    def module(seed: int) -> bytes:
        return "".join(f"def handler_{seed}_{i}(request, retries={i + seed}):\n"
                       f"    response = request.send(timeout={seed * 7 + i})\n"
                       f"    return response.json()['field_{seed}_{i}']\n\n" for i in range(8)).encode()

    fake.add(Repo("acme/api", 900, files={"api/client.py": module(1), "api/server.py": module(2)}),
             Repo("acme/cli", 500, files={"cli/main.py": module(3)}),
             Repo("gpl/tool", 700, license="GPL-3.0", files={"tool.py": module(4)}))
    cfg = CrawlConfig(sources=["github"], shard_bytes=1, decontam=DecontamConfig(enabled=False),
                      github=GitHubConfig(api_url=fake.url, token_env="TEST_GITHUB_TOKEN", min_stars=10))
    stats = run_crawl(cfg, tmp_path / "out", progress=False)
    assert stats["files_kept"] == 3 and stats["shards"] == 2  # one chunk (and shard) per repository here
    rows = read_shards(tmp_path / "out")
    assert {(r["repo"], r["path"], r["license"]) for r in rows} == {
        ("acme/api", "api/client.py", "MIT"), ("acme/api", "api/server.py", "MIT"), ("acme/cli", "cli/main.py", "MIT")}
    assert {r["commit"] for r in rows} == {sha_of("acme/api"), sha_of("acme/cli")}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["repos"] == {"acme/api": sha_of("acme/api"), "acme/cli": sha_of("acme/cli")}
    plan = json.loads((tmp_path / "out" / "github-plan.json").read_text())
    assert [r["repo"] for r in plan["repos"]] == ["acme/api", "acme/cli"] and plan["skipped"] == {"license": 1}
    before = len(fake.requests)
    assert run_crawl(cfg, tmp_path / "out", progress=False) == stats
    assert len(fake.requests) == before  # the plan and every finished chunk are reused: no search, no download
