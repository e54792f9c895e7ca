"""The `github` crawl source: search public repositories, pin each to a commit, stream its tarball.

    codepmp crawl --out out/crawl --set 'crawl.sources=["github"]' --set crawl.github.max_repos=50

or from Python:

    import os, time
    from codepmp.config import CrawlConfig
    from codepmp.crawl.github import GitHubSource
    cfg = CrawlConfig(sources=["github"], languages=["python", "cpp"])
    src = GitHubSource(cfg.github, languages=cfg.languages, max_archive_bytes=cfg.max_archive_bytes,
                       max_archive_members=cfg.max_archive_members, environ=os.environ,
                       sleep=time.sleep, clock=time.time)
    plan = src.plan()                    # JSON-serialisable: store it to make the crawl reproducible
    for item in plan:
        for entry in src.entries(item):  # codepmp.crawl.sources.Entry, with repo/commit/license set
            ...

Steps. `plan()` runs the REST search `language:<Lang> stars:>=<min_stars>`, most stars first, keeps
repositories whose detected license (`license.spdx_id`) is in `github.licenses`, and pins each
default branch to a commit sha. `entries(item)` downloads `/repos/{owner}/{name}/tarball/{sha}` to
an anonymous temporary file under $TMPDIR (at most `max_archive_bytes`, gone when iteration ends) and reads it
as a stream with `codepmp.crawl.sources.iter_tar_stream`: nothing is extracted, GitHub's top folder
`owner-name-sha/` is stripped, unsafe members come back with `skip` set.

Token: the environment variable named by `github.token_env` (default `GITHUB_TOKEN`), sent as
`Authorization: Bearer ...`. It is never logged, never put in an error message and not shown by
`repr`. Without it the API allows 60 requests an hour, so any real crawl needs one.

Search cap: GitHub returns at most 1000 results per search query (later pages answer 422). To go
further the query has to be split by star ranges (`stars:>=5000`, then `stars:2000..4999`, ...).
`plan()` does that by itself: when a query's 1000 results are used up it asks again for
`stars:<min_stars>..<fewest stars seen so far>`, dropping the repositories it already has, until
`max_repos` are planned or the range is empty. (Should more than 1000 repositories share one
star count, only the first 1000 of them can be reached.)

Failures. Rate limits (403/429 with `X-RateLimit-Remaining: 0`, or `Retry-After`) are waited out
with the injected `sleep`, up to `github.max_rate_limit_wait_s`; 5xx, connection errors and
timeouts are retried with exponential backoff, `github.max_retries` attempts in all. Either kind
of exhaustion, and a refused token (401), raises ServiceError: the crawl as a whole cannot go on.
A repository that is gone (404), empty (409), blocked (403, 451) or whose branch no longer
resolves (422) is left out and counted in `skipped`. A tarball that is corrupt, truncated or over
the caps yields one `bad_archive` entry in place of its files, so one bad repository never stops
a crawl.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import IO, Any, TypeVar

import requests

from codepmp.config import GitHubConfig
from codepmp.crawl.sources import Entry, iter_tar_stream
from codepmp.errors import ConfigError, InputError, ServiceError
from codepmp.retry import RetryLater, RetryPolicy, rate_limit_reset_s, retry_after_s

log = logging.getLogger(__name__)

T = TypeVar("T")

GITHUB_LANGUAGES: dict[str, str] = {
    "python": "Python",
    "javascript": "JavaScript",
    "typescript": "TypeScript",
    "java": "Java",
    "c": "C",
    "cpp": "C++",
    "csharp": "C#",
    "go": "Go",
    "rust": "Rust",
    "ruby": "Ruby",
    "php": "PHP",
    "kotlin": "Kotlin",
    "scala": "Scala",
    "swift": "Swift",
    "lua": "Lua",
    "shell": "Shell",
}
"""codepmp language name (`codepmp.crawl.filters.LANGUAGES`) -> GitHub's `language:` search qualifier."""

SEARCH_PER_PAGE = 100
"""Results per search page: the API's maximum, since search requests have the tightest rate limit."""

SEARCH_RESULT_CAP = 1000
"""Results the search API returns for one query, whatever `total_count` says."""

API_VERSION = "2022-11-28"
USER_AGENT = "codepmp-crawl"

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
SECONDARY_RATE_LIMIT_WAIT_S = 60.0
"""GitHub's advice for a secondary rate limit that names no time: wait at least a minute."""

DOWNLOAD_CHUNK_BYTES = 1 << 20

REPO_UNAVAILABLE = {403: "forbidden", 404: "not_found", 409: "empty", 422: "no_commit", 451: "unavailable"}
"""HTTP status on a repository endpoint -> reason it is counted under in `skipped` (one repo, not the crawl)."""

_SHA = re.compile(r"[0-9a-f]{40}")
_TOKEN_IN_URL = re.compile(r"(token=)[^&\s'\"]+")
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class RepoUnavailable(Exception):
    """One repository cannot be read (deleted, empty, blocked); `reason` is its key in `skipped`."""

    def __init__(self, repo: str, status: int) -> None:
        super().__init__(f"GitHub answered {status} for {repo}")
        self.reason = REPO_UNAVAILABLE[status]


class ArchiveTooLarge(Exception):
    """A tarball's compressed size is over `max_archive_bytes`."""


class GitHubSource:
    """Repository search, commit pinning and tarball streaming against the GitHub REST API (see the module doc)."""

    def __init__(
        self,
        cfg: GitHubConfig,
        languages: Iterable[str] = ("python",),
        max_archive_bytes: int = 4_000_000_000,
        max_archive_members: int = 2_000_000,
        environ: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        session: requests.Session | None = None,
    ) -> None:
        self.cfg = cfg
        self.languages = list(dict.fromkeys(languages))
        unknown = [lang for lang in self.languages if lang not in GITHUB_LANGUAGES]
        if unknown:
            raise ConfigError(
                f"no GitHub search qualifier for language(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(GITHUB_LANGUAGES))})"
            )
        self.max_archive_bytes = max_archive_bytes
        self.max_archive_members = max_archive_members
        self.skipped: Counter[str] = Counter()
        """Repositories left out since this source was made, by reason (license, not_found, empty, ...)."""
        self._sleep = sleep
        self._clock = clock
        self._retry = RetryPolicy(first_delay_s=BACKOFF_BASE_S, max_delay_s=BACKOFF_MAX_S,
                                  attempts=max(1, cfg.max_retries), sleep=sleep)
        self._api = cfg.api_url.rstrip("/")
        self._token = (os.environ if environ is None else environ).get(cfg.token_env, "")
        self._session = session or requests.Session()
        self._session.headers.update(self._headers())
        if not self._token:
            log.warning("no GitHub token in $%s: the API allows 60 unauthenticated requests an hour", cfg.token_env)

    def __repr__(self) -> str:
        token = "set" if self._token else "unset"
        return f"GitHubSource(api_url={self._api!r}, languages={self.languages!r}, token={token})"

    def _headers(self) -> dict[str, str]:
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": USER_AGENT,
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    # ------------------------------------------------------------------ plan

    def plan(self) -> list[dict[str, Any]]:
        """Repositories to crawl, each pinned to a commit, sorted by `owner/name`; reasons for the rest in `skipped`.

        Each is `{"repo", "commit", "license", "stars", "language", "default_branch", "size_kb"}`, where
        `size_kb` is GitHub's size of the repository (its git data, so only a rough guide to the tarball).
        Up to `max_repos` per language, taken in the search's order (most stars first), so the same
        search results always give the same plan.
        """
        plan: list[dict[str, Any]] = []
        seen: set[str] = set()
        for language in self.languages:
            planned = 0
            for item in self._search(language) if self.cfg.max_repos > 0 else ():
                entry = self._plan_item(item, language, seen)
                if entry is not None:
                    plan.append(entry)
                    planned += 1
                    if planned == self.cfg.max_repos:
                        break  # before the generator asks for another page
            log.info("github: planned %d %s repositories", planned, language)
        if self.skipped:
            log.info("github: skipped %s", dict(sorted(self.skipped.items())))
        return sorted(plan, key=lambda p: p["repo"])

    def _plan_item(self, item: Mapping[str, Any], language: str, seen: set[str]) -> dict[str, Any] | None:
        """One search result as a plan entry, or None (counted in `skipped`) when it must not be crawled."""
        repo = item["full_name"]
        if repo in seen:
            self.skipped["duplicate"] += 1
            return None
        seen.add(repo)
        spdx = (item.get("license") or {}).get("spdx_id")
        if spdx not in self.cfg.licenses:
            self.skipped["license"] += 1
            return None
        branch = item.get("default_branch") or "HEAD"
        try:
            commit = self._pin(repo, branch)
        except RepoUnavailable as e:
            log.warning("github: skipping %s: %s", repo, e)
            self.skipped[e.reason] += 1
            return None
        return {"repo": repo, "commit": commit, "license": spdx, "stars": int(item.get("stargazers_count") or 0),
                "language": language, "default_branch": branch, "size_kb": int(item.get("size") or 0)}

    def _search(self, language: str) -> Iterator[Mapping[str, Any]]:
        """Search results for one language, most stars first, past the 1000-result cap by narrowing the star range."""
        seen: set[str] = set()
        upper: int | None = None
        while True:
            fewest: int | None = None
            for page in range(1, SEARCH_RESULT_CAP // SEARCH_PER_PAGE + 1):
                items = self._search_page(language, upper, page)
                for item in items:
                    fewest = int(item.get("stargazers_count") or 0)
                    if item["full_name"] not in seen:
                        seen.add(item["full_name"])
                        yield item
                if len(items) < SEARCH_PER_PAGE:
                    return
            if fewest is None:
                return
            upper = fewest if upper is None or fewest < upper else fewest - 1
            if upper < self.cfg.min_stars:
                return
            log.info("github: %s search hit the %d-result cap; continuing with stars %d..%d",
                     language, SEARCH_RESULT_CAP, self.cfg.min_stars, upper)

    def _search_page(self, language: str, upper: int | None, page: int) -> list[Mapping[str, Any]]:
        stars = f">={self.cfg.min_stars}" if upper is None else f"{self.cfg.min_stars}..{upper}"
        params = {"q": f"language:{GITHUB_LANGUAGES[language]} stars:{stars}", "sort": "stars", "order": "desc",
                  "per_page": str(SEARCH_PER_PAGE), "page": str(page)}
        url = f"{self._api}/search/repositories"
        resp = self._request(url, params=params)
        body = self._json(resp, url)
        if body.get("incomplete_results"):
            log.warning("github: search for %s page %d timed out on GitHub's side; results may be missing",
                        language, page)
        items = body.get("items")
        if not isinstance(items, list):
            raise ServiceError(f"GitHub search {url} answered without an `items` list")
        return items

    def _pin(self, repo: str, branch: str) -> str:
        """The commit sha `branch` of `repo` points at now, so the crawl reads a fixed tree."""
        url = f"{self._repo_url(repo)}/commits/{urllib.parse.quote(branch, safe='/')}"
        resp = self._request(url)
        if resp.status_code in REPO_UNAVAILABLE:
            raise RepoUnavailable(repo, resp.status_code)
        sha = self._json(resp, url).get("sha")
        if not isinstance(sha, str) or not _SHA.fullmatch(sha):
            raise ServiceError(f"GitHub {url} answered without a commit sha")
        return sha

    def _repo_url(self, repo: str) -> str:
        return f"{self._api}/repos/{urllib.parse.quote(repo, safe='/')}"

    # ------------------------------------------------------------------ entries

    def entries(self, item: Mapping[str, Any]) -> Iterator[Entry]:
        """Files of one planned repository at its pinned commit, with `repo`, `commit` and `license` set.

        Never raises for a problem with this one repository: a gone repository yields nothing (and is
        counted in `skipped`); a tarball that is corrupt, truncated or over the caps yields a single
        `bad_archive` entry. The archive is checked end to end before any file is yielded, so a
        repository comes through whole or not at all.
        """
        repo, commit = item["repo"], item["commit"]
        label = f"GitHub tarball of {repo}@{commit}"
        with tempfile.TemporaryFile(prefix="codepmp-github-", suffix=".tar.gz") as archive:
            try:
                self._download(repo, f"{self._repo_url(repo)}/tarball/{commit}", archive)
                self._check_archive(archive, label)
                archive.seek(0)
                for entry in self._read_archive(archive, label):
                    yield replace(entry, read=_read_as_os_error(entry.read), repo=repo, commit=commit,
                                  license=item.get("license"))
            except RepoUnavailable as e:
                log.warning("github: skipping %s: %s", repo, e)
                self.skipped[e.reason] += 1
            except (ArchiveTooLarge, InputError) as e:
                log.warning("github: %s; skipping its files", e)
                yield self.bad_archive(item)

    def bad_archive(self, item: Mapping[str, Any]) -> Entry:
        """The entry that stands for a repository whose tarball could not be read."""
        return Entry(f"{item['repo']}.tar.gz", 0, "bad_archive", _no_content, repo=item["repo"],
                     commit=item["commit"], license=item.get("license"))

    def _read_archive(self, archive: IO[bytes], label: str) -> Iterator[Entry]:
        return iter_tar_stream(archive, label=label, strip_components=1, max_members=self.max_archive_members,
                               max_bytes=self.max_archive_bytes)

    def _check_archive(self, archive: IO[bytes], label: str) -> None:
        """Read every header of the archive (raising InputError as `iter_tar_stream` does), reading no file."""
        archive.seek(0)
        for _ in self._read_archive(archive, label):
            pass

    def _download(self, repo: str, url: str, dest: IO[bytes]) -> None:
        """Stream `url` into `dest`, refusing more than `max_archive_bytes`; a cut-off transfer starts over."""
        def attempt() -> None:
            with self._request(url, stream=True) as resp:
                if resp.status_code in REPO_UNAVAILABLE:
                    raise RepoUnavailable(repo, resp.status_code)
                self._raise_for_status(resp, url)
                dest.seek(0)
                dest.truncate()
                try:
                    self._copy_capped(resp, dest, url)
                except _TRANSIENT as e:
                    raise RetryLater(self._describe(e)) from e

        self._retrying(url, attempt)

    def _copy_capped(self, resp: requests.Response, dest: IO[bytes], url: str) -> None:
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_archive_bytes:
            raise ArchiveTooLarge(f"{url} is {length} bytes, more than max_archive_bytes={self.max_archive_bytes}")
        written = 0
        for chunk in resp.iter_content(DOWNLOAD_CHUNK_BYTES):
            written += len(chunk)
            if written > self.max_archive_bytes:
                raise ArchiveTooLarge(f"{url} is more than max_archive_bytes={self.max_archive_bytes} bytes")
            dest.write(chunk)

    # ------------------------------------------------------------------ HTTP

    def _request(self, url: str, params: Mapping[str, str] | None = None, stream: bool = False) -> requests.Response:
        """GET `url`, waiting out rate limits and retrying transient failures; any other status is returned.

        Raises ServiceError when retries or the rate-limit wait are exhausted, and on 401.
        """
        rate_limited = 0

        def attempt() -> requests.Response:
            nonlocal rate_limited
            # A rate limit is waited out here, on top of the retry policy: the wait is the server's, and it
            # does not use up an attempt.
            while True:
                try:
                    resp = self._session.get(url, params=params, stream=stream, timeout=self.cfg.timeout_s)
                except _TRANSIENT as e:
                    raise RetryLater(self._describe(e)) from e
                if resp.status_code == 401:
                    resp.close()
                    raise ServiceError(self._unauthorized_message(url))
                wait = self._rate_limit_wait(resp)
                if wait is None:
                    break
                resp.close()
                rate_limited += 1
                self._wait_rate_limit(url, wait, rate_limited)
            if resp.status_code >= 500:
                resp.close()
                raise RetryLater(f"HTTP {resp.status_code}")
            return resp

        return self._retrying(url, attempt)

    def _retrying(self, url: str, attempt: Callable[[], T]) -> T:
        """`attempt()` under the retry policy; ServiceError once `max_retries` attempts have failed."""
        def announce(error: Exception, delay: float, failures: int) -> None:
            log.warning("github: %s failed (%s); retrying in %.0f s", url, error, delay)

        def exhausted(error: Exception) -> ServiceError:
            return ServiceError(f"GitHub request {url} failed after {self._retry.attempts} attempts; "
                                f"last error: {error}")

        return self._retry.call(attempt, on_retry=announce, give_up=exhausted)

    def _rate_limit_wait(self, resp: requests.Response) -> float | None:
        """Seconds to wait when `resp` is a primary or secondary rate limit, else None."""
        if resp.status_code not in (403, 429):
            return None
        now = self._clock()
        wait = retry_after_s(resp.headers, now)
        if wait is None:
            wait = rate_limit_reset_s(resp.headers, now)
        if wait is not None:
            return wait
        if (resp.headers.get("X-RateLimit-Remaining") == "0" or resp.status_code == 429
                or "rate limit" in _message(resp).lower()):
            return SECONDARY_RATE_LIMIT_WAIT_S
        return None

    def _wait_rate_limit(self, url: str, wait: float, times: int) -> None:
        if wait > self.cfg.max_rate_limit_wait_s:
            raise ServiceError(
                f"GitHub rate limit on {url} lifts in {math.ceil(wait)} s, longer than "
                f"github.max_rate_limit_wait_s={self.cfg.max_rate_limit_wait_s:g}; "
                f"{'wait and rerun' if self._token else f'set a token in ${self.cfg.token_env}'} "
                "or raise the limit"
            )
        if times > self.cfg.max_retries:
            raise ServiceError(f"GitHub kept rate-limiting {url} after {times - 1} waits")
        log.warning("github: rate limited on %s; sleeping %.0f s", url, wait)
        self._sleep(wait)

    def _unauthorized_message(self, url: str) -> str:
        if self._token:
            return f"GitHub refused the token in ${self.cfg.token_env} (401 on {url}); check that it is valid"
        return f"GitHub answered 401 on {url} and no token is set in ${self.cfg.token_env}"

    def _raise_for_status(self, resp: requests.Response, url: str) -> None:
        if resp.status_code >= 400:
            raise ServiceError(f"GitHub {url} answered {resp.status_code}: {self._redact(_message(resp))}")

    def _json(self, resp: requests.Response, url: str) -> dict[str, Any]:
        self._raise_for_status(resp, url)
        try:
            body = resp.json()
        except ValueError:
            raise ServiceError(f"GitHub {url} answered {resp.status_code} with a body that is not JSON") from None
        if not isinstance(body, dict):
            raise ServiceError(f"GitHub {url} answered {resp.status_code} with JSON that is not an object")
        return body

    def _describe(self, error: Exception) -> str:
        return f"{type(error).__name__}: {self._redact(str(error))}"

    def _redact(self, text: str) -> str:
        """`text` without the token or signed-URL tokens (a redirect to codeload can carry one in its query)."""
        text = _TOKEN_IN_URL.sub(r"\1***", text)
        return text.replace(self._token, "***") if self._token else text


def _message(resp: requests.Response) -> str:
    """GitHub's `message` field of an error response, or the start of its body."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    return str(body.get("message", "")) if isinstance(body, dict) else ""


def _read_as_os_error(read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """`read` raising OSError, which the crawl counts as one unreadable file, instead of InputError, which stops it."""
    def wrapped(limit: int) -> bytes:
        try:
            return read(limit)
        except InputError as e:
            raise OSError(str(e)) from None
    return wrapped


def _no_content(limit: int) -> bytes:
    raise OSError("the repository's tarball could not be read")
