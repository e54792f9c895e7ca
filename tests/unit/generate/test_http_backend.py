"""The OpenAI-compatible HTTP backend against `codepmp serve`'s server on a tiny model, and against fakes
that answer 429, 500 or 400.

    .venv/bin/python -m pytest tests/unit/test_synthesize_http.py -q
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from codepmp.errors import ServiceError
from codepmp.generate.backend import Sampling, TransformersBackend
from codepmp.generate.http_backend import OpenAIBackend
from codepmp.generate.server import CompletionServer

GREEDY = Sampling(max_new_tokens=6, temperature=0.0)
PROMPTS = ["Write a function that adds two numbers.", "Describe this code: x = 1", "Sort a list in Python."]


def start(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[CompletionServer]:
    from codepmp.testing import write_tiny_model

    folder = tmp_path_factory.mktemp("lm")
    models = {name: str(write_tiny_model(folder / name, reward=False, seed=seed))
              for name, seed in (("tiny", 0), ("tiny-weak", 1))}
    with CompletionServer({name: TransformersBackend(path, batch_size=1) for name, path in models.items()}) as server:
        yield server


def test_http_backend_equals_local_greedy_generation(served: CompletionServer):
    client = OpenAIBackend(served.url, "tiny", concurrency=3)
    assert client.generate(PROMPTS, GREEDY) == served.backends["tiny"].generate(PROMPTS, GREEDY)


def test_server_rejects_bad_requests_with_400_and_the_client_says_so(served: CompletionServer):
    import requests

    reply = requests.post(served.url + "/chat/completions", json={"messages": []}, timeout=10)
    assert reply.status_code == 400 and "messages" in reply.json()["error"]["message"]
    assert [m["id"] for m in requests.get(served.url + "/models", timeout=10).json()["data"]] == ["tiny", "tiny-weak"]
    missing = requests.post(served.url + "/chat/completions", timeout=10,
                            json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert missing.status_code == 404 and "not served" in missing.json()["error"]["message"]
    bad = OpenAIBackend(served.url, "tiny")
    with pytest.raises(ServiceError, match="HTTP 400"):
        bad.generate(["x"], Sampling(max_new_tokens=0, temperature=0.0))


class Scripted(ThreadingHTTPServer):
    """Answers POSTs with the scripted (status, headers) replies first, then 200 with the prompt echoed."""

    daemon_threads = True

    def __init__(self, replies: list[tuple[int, dict]]):
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.replies, self.seen = list(replies), []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ScriptedHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((dict(self.headers), body))
        status, headers = self.server.replies.pop(0) if self.server.replies else (200, {})
        answer = {"choices": [{"message": {"content": "echo: " + body["messages"][0]["content"]}}]}
        data = json.dumps(answer if status == 200 else {"error": "busy"}).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[callable]:
    servers = []

    def make(*replies: tuple[int, dict]) -> Scripted:
        server = Scripted(list(replies))
        servers.append((server, start(server)))
        return server

    yield make
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join()


def test_429_then_success_waits_retry_after(scripted, monkeypatch, caplog):
    monkeypatch.setenv("TEST_API_KEY", "sk-secret-test-key")
    server = scripted((429, {"Retry-After": "3"}))
    sleeps: list[float] = []
    client = OpenAIBackend(server.url, "m", api_key_env="TEST_API_KEY", concurrency=1, sleep=sleeps.append)
    assert client.generate(["hello"], GREEDY) == ["echo: hello"]
    assert sleeps == [3.0] and len(server.seen) == 2
    headers, body = server.seen[-1]
    assert headers["Authorization"] == "Bearer sk-secret-test-key"
    assert body["max_tokens"] == 6 and body["temperature"] == 0.0 and body["model"] == "m"
    assert "sk-secret" not in caplog.text and "sk-secret" not in repr(client)


def test_server_errors_back_off_then_fail_with_the_endpoint_named(scripted):
    server = scripted(*[(500, {})] * 3)
    sleeps: list[float] = []
    client = OpenAIBackend(server.url, "m", max_retries=3, backoff_s=0.5, sleep=sleeps.append)
    with pytest.raises(ServiceError, match=f"{server.url}/chat/completions failed 3 times, last: HTTP 500"):
        client.generate(["hello"], GREEDY)
    assert sleeps == [0.5, 1.0]


def test_a_dead_endpoint_is_a_service_error():
    client = OpenAIBackend("http://127.0.0.1:9/v1", "m", max_retries=2, sleep=lambda s: None, timeout_s=2)
    with pytest.raises(ServiceError, match="ConnectionError"):
        client.generate(["hello"], GREEDY)


def test_order_is_kept_with_concurrency(scripted):
    server = scripted()
    client = OpenAIBackend(server.url, "m", concurrency=4)
    prompts = [f"p{i}" for i in range(20)]
    assert client.generate(prompts, GREEDY) == [f"echo: {p}" for p in prompts]


def test_synthesis_through_the_server_equals_in_process(served: CompletionServer, tmp_path):
    """The whole synthesis step, greedy, once with the in-process backend and once through the server."""
    import dataclasses
    import inspect
    import textwrap

    from codepmp.config import CrawlConfig, DecontamConfig, SynthesizeConfig
    from codepmp.crawl import run_crawl
    from codepmp.synthesize.run import read_pairs, run_synthesis

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "textwrap.py").write_text(inspect.getsource(textwrap))
    run_crawl(CrawlConfig(sources=[str(corpus)], max_bytes=50_000, decontam=DecontamConfig(enabled=False)),
              tmp_path / "crawl", progress=False)
    strong, weak = (served.backends[name].model_spec for name in ("tiny", "tiny-weak"))
    local = SynthesizeConfig(summarizer_model=strong, strong_model=strong, weak_model=weak, temperature=0.0,
                             max_code_chars=300, description_tokens=8, code_tokens=8, max_pairs=1)
    remote = dataclasses.replace(local, summarizer_model="tiny", strong_model="tiny", weak_model="tiny-weak",
                                 backend="openai", endpoint=served.url, concurrency=2)
    stats = [run_synthesis(cfg, tmp_path / "crawl", tmp_path / name)
             for cfg, name in ((local, "local"), (remote, "remote"))]
    timing = {"generate_s"}
    assert {k: v for k, v in stats[0].items() if k not in timing} == {k: v for k, v in stats[1].items()
                                                                       if k not in timing}
    assert read_pairs(tmp_path / "local") == read_pairs(tmp_path / "remote")


def test_unknown_backend_and_missing_endpoint_are_config_errors(tmp_path):
    from codepmp.config import SynthesizeConfig
    from codepmp.errors import ConfigError
    from codepmp.synthesize.run import make_backend

    with pytest.raises(ConfigError, match="endpoint is empty"):
        make_backend(SynthesizeConfig(backend="openai"), "m")
    with pytest.raises(ConfigError, match="unknown synthesize.backend 'vllm-typo'"):
        make_backend(SynthesizeConfig(backend="vllm-typo"), "m")


def test_server_reports_token_capped_completions_as_length(served: CompletionServer):
    """finish_reason "length" when max_tokens cut the answer; the client turns it into finished=False."""
    import requests

    body = {"model": "tiny", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 3,
            "temperature": 0}
    answer = requests.post(served.url + "/chat/completions", json=body, timeout=30).json()
    local = served.backends["tiny"].complete([PROMPTS[0]], Sampling(max_new_tokens=3, temperature=0.0))[0]
    assert answer["choices"][0]["finish_reason"] == ("stop" if local.finished else "length")
    assert answer["usage"]["completion_tokens"] == local.tokens
    [remote] = OpenAIBackend(served.url, "tiny").complete([PROMPTS[0]], Sampling(max_new_tokens=3, temperature=0.0))
    assert remote == local


def _serve(model: str) -> tuple:
    """`codepmp serve` in its own process on a free port: (process, base URL) once it answers /health."""
    import socket
    import subprocess
    import sys
    import time

    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "codepmp.cli", "serve", "--model", model, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(url.removesuffix("/v1") + "/health", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("codepmp serve did not come up in 120 s")


def test_server_dying_mid_shard_then_rerun_completes_without_duplicates(tmp_path):
    """The server process is killed (SIGKILL) halfway through a chunk's requests; the stage fails with a clear
    error, and a rerun against a new server generates only the chunks not yet cached and writes every pair once,
    equal to a run that never failed."""
    import dataclasses
    import inspect
    import signal
    import string
    import textwrap

    import pyarrow.parquet as pq

    from codepmp.config import CrawlConfig, DecontamConfig, SynthesizeConfig
    from codepmp.crawl import run_crawl
    from codepmp.synthesize.run import make_backend, run_synthesis
    from codepmp.testing import write_tiny_model

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for module in (textwrap, string, inspect):
        (corpus / f"{module.__name__}.py").write_text(inspect.getsource(module))
    run_crawl(CrawlConfig(sources=[str(corpus)], max_bytes=200_000, decontam=DecontamConfig(enabled=False)),
              tmp_path / "crawl", progress=False)
    model = str(write_tiny_model(tmp_path / "lm", reward=False))
    base = SynthesizeConfig(summarizer_model=model, strong_model=model, weak_model=model, temperature=0.7,
                            max_code_chars=200, description_tokens=6, code_tokens=6, chunk_rows=2, max_pairs=0,
                            backend="openai", concurrency=1, retries=1)

    proc, url = _serve(model)
    requests_made: list[str] = []

    class DiesMidChunk:
        """The HTTP backend; in the 3rd chunk (chosen, chunk 0 of 2) the server is killed after 1 of 2 requests."""

        def __init__(self, inner):
            self.inner = inner

        def complete(self, prompts, sampling, desc="generate"):
            requests_made.append(desc)
            if len(requests_made) == 3:
                self.inner.complete(prompts[:1], sampling, desc)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            return self.inner.complete(prompts, sampling, desc)

    try:
        cfg = dataclasses.replace(base, endpoint=url)
        with pytest.raises(ServiceError, match="failed 1 times, last: ConnectionError"):
            run_synthesis(cfg, tmp_path / "crawl", tmp_path / "out",
                          backend_factory=lambda c, spec: DiesMidChunk(make_backend(c, spec)))
    finally:
        proc.kill()
        proc.wait()
    assert requests_made == ["description"] * 2 + ["chosen"]

    proc, url = _serve(model)
    try:
        rerun: list[str] = []

        def counted(c, spec):
            backend = make_backend(c, spec)
            original = backend.complete

            def complete(prompts, sampling, desc="generate"):
                rerun.append(desc)
                return original(prompts, sampling, desc)

            backend.complete = complete
            return backend

        cfg = dataclasses.replace(base, endpoint=url)
        resumed = run_synthesis(cfg, tmp_path / "crawl", tmp_path / "out", backend_factory=counted)
        assert rerun == ["chosen"] * 2 + ["rejected"] * 2  # the cached descriptions are not asked for again
        run_synthesis(cfg, tmp_path / "crawl", tmp_path / "clean")
    finally:
        proc.kill()
        proc.wait()
    pairs = pq.read_table(tmp_path / "out" / "pairs.parquet").to_pylist()
    assert len({p["id"] for p in pairs}) == len(pairs) == resumed["pairs"] == 3
    assert pairs == pq.read_table(tmp_path / "clean" / "pairs.parquet").to_pylist()
