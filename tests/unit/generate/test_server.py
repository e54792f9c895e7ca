"""`codepmp serve` answers concurrently: other requests go through while a completion generates, and completion
requests that wait together share one `complete` call of the backend without changing any answer. A real server
on a free port, real HTTP requests, a tiny model.

    .venv/bin/python -m pytest tests/unit/test_serve_concurrency.py -q
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests

from codepmp.generate.backend import Completion, Sampling, TransformersBackend
from codepmp.generate.server import CompletionServer

PROMPTS = ["Write a function that adds two numbers.", "Describe this code: x = 1", "Sort a list in Python.",
           "Reverse a string.", "Parse a date."]


class GatedBackend:
    """A transformers backend that records each `complete` call's prompts and, while `gate` is clear, holds
    every call at its start, so a test can act while the server's worker is inside a generation."""

    def __init__(self, inner: TransformersBackend):
        self.inner, self.calls = inner, []
        self.entered, self.gate = threading.Event(), threading.Event()

    def complete(self, prompts: list[str], sampling: Sampling, desc: str = "generate") -> list[Completion]:
        self.calls.append(list(prompts))
        self.entered.set()
        assert self.gate.wait(60), "the test never let the generation run"
        return self.inner.complete(prompts, sampling, desc)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TransformersBackend:
    from codepmp.testing import write_tiny_model

    # Four rows decode at once, so requests that share a call really share a batch.
    return TransformersBackend(str(write_tiny_model(tmp_path_factory.mktemp("lm"), reward=False)), batch_size=4)


@pytest.fixture
def gated(tiny) -> Iterator[tuple[CompletionServer, GatedBackend]]:
    backend = GatedBackend(tiny)
    with CompletionServer({"tiny": backend}) as server:
        yield server, backend
        backend.gate.set()  # a failed test must not leave the worker waiting


def post_in_background(url: str, body: dict) -> tuple[threading.Thread, dict]:
    """POST `body` to `url` from a thread; the dict gets the reply and the time it came back."""
    answer: dict = {}

    def post() -> None:
        answer["reply"] = requests.post(url, json=body, timeout=120)
        answer["at"] = time.monotonic()

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, answer


def chat(prompt: str, max_tokens: int, temperature: float = 0.0, seed: int = 0) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": temperature, "seed": seed}


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_models_and_health_answer_while_a_long_completion_runs(gated, tiny):
    server, backend = gated
    long, answer = post_in_background(server.url + "/chat/completions", chat(PROMPTS[0], max_tokens=256))
    assert backend.entered.wait(30)
    models = requests.get(server.url + "/models", timeout=10)
    health = requests.get(server.url.removesuffix("/v1") + "/health", timeout=10)
    listed_at = time.monotonic()
    assert models.json()["data"] == [{"id": "tiny", "object": "model"}] and health.json() == {"status": "ok"}
    assert long.is_alive() and "reply" not in answer  # the completion is still generating
    backend.gate.set()
    long.join(120)
    [alone] = tiny.complete([PROMPTS[0]], Sampling(max_new_tokens=256, temperature=0.0))
    reply = answer["reply"].json()
    assert reply["choices"][0]["message"]["content"] == alone.text
    assert reply["usage"]["completion_tokens"] == alone.tokens and listed_at < answer["at"]


def test_waiting_greedy_requests_share_one_call_and_get_their_solo_answers(gated, tiny):
    """While a first request generates, four more arrive: two greedy ones with the same settings (but the
    different seeds the HTTP client sends) share the next call; one with another max_tokens and one sampled
    run alone. Every answer equals the one the request gets by itself."""
    server, backend = gated
    url = server.url + "/chat/completions"
    bodies = [chat(PROMPTS[0], 8), chat(PROMPTS[1], 8, seed=1), chat(PROMPTS[2], 8, seed=2), chat(PROMPTS[3], 5),
              chat(PROMPTS[4], 8, temperature=0.7, seed=5)]
    first = post_in_background(url, bodies[0])
    assert backend.entered.wait(30)
    posts = [first]
    worker = server.workers["tiny"]
    for n, body in enumerate(bodies[1:], start=1):
        posts.append(post_in_background(url, body))
        wait_until(lambda: worker.waiting.qsize() == n)  # arrival order fixes the order of the calls
    backend.gate.set()
    for thread, _ in posts:
        thread.join(120)
    assert backend.calls == [[PROMPTS[0]], [PROMPTS[1], PROMPTS[2]], [PROMPTS[3]], [PROMPTS[4]]]
    for body, (_, answer) in zip(bodies, posts, strict=True):
        sampling = Sampling(max_new_tokens=body["max_tokens"], temperature=body["temperature"], seed=body["seed"])
        [alone] = tiny.complete([body["messages"][0]["content"]], sampling)
        reply = answer["reply"].json()
        assert reply["choices"][0]["message"]["content"] == alone.text
        assert reply["choices"][0]["finish_reason"] == ("stop" if alone.finished else "length")


def test_concurrent_clients_get_the_answers_of_a_sequential_run(tiny):
    """Many requests at once through the HTTP client, no gate: whatever calls they end up in, each greedy
    answer is the one the backend gives that prompt alone."""
    from codepmp.generate.http_backend import OpenAIBackend

    greedy = Sampling(max_new_tokens=6, temperature=0.0)
    prompts = [f"{prompt} ({n})" for n in range(2) for prompt in PROMPTS]
    with CompletionServer({"tiny": tiny}) as server:
        remote = OpenAIBackend(server.url, "tiny", concurrency=len(prompts)).complete(prompts, greedy)
    assert remote == [tiny.complete([prompt], greedy)[0] for prompt in prompts]


class FailsOnce:
    """A backend whose first call fails; later calls echo their prompts."""

    def __init__(self):
        self.calls = 0

    def complete(self, prompts: list[str], sampling: Sampling, desc: str = "generate") -> list[Completion]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("out of memory")
        return [Completion("echo: " + prompt, tokens=1) for prompt in prompts]


def test_a_failed_generation_is_a_500_and_the_server_keeps_serving():
    with CompletionServer({"echo": FailsOnce()}) as server:
        url = server.url + "/chat/completions"
        failed = requests.post(url, json=chat("x", 4) | {"model": "echo"}, timeout=10)
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
        assert "out of memory" in failed.json()["error"]["message"]
        ok = requests.post(url, json=chat("y", 4) | {"model": "echo"}, timeout=10)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "echo: y"


def test_malformed_requests_and_unknown_routes_answer_in_the_openai_error_shape():
    with CompletionServer({"echo": FailsOnce()}) as server:
        url, root = server.url + "/chat/completions", server.url.removesuffix("/v1")
        for data in (b"{not json", b"[1, 2]", b'{"messages": [{"content": "x"}], "max_tokens": null}'):
            reply = requests.post(url, data=data, timeout=10)
            assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"
        for method, path in (("GET", "/v1/chat/completions"), ("POST", "/v1/models"), ("GET", "/nope")):
            reply = requests.request(method, root + path, timeout=10)
            assert reply.status_code == 404 and reply.json() == {"error": {"message": f"no route {path}"}}
