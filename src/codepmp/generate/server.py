"""A small OpenAI-compatible server over the transformers backend: one model shared by several stages or users.

    codepmp serve --model smollm2-135m-instruct --model gemma3-270m --port 8000   # OpenAIBackend at :8000/v1

Endpoints: `POST /v1/chat/completions` (the request's `model` picks one of the served models; the message goes
through its chat template, as in the transformers backend), `GET /v1/models`, `GET /health`. Listens on
127.0.0.1 unless told otherwise.

Requests are served concurrently (FastAPI on uvicorn, one event loop); generation runs off the loop, on one worker
thread per model (a model is not thread-safe, and one copy of each stays in memory). Completion requests that
wait together for the same model with the same greedy settings share one `complete` call, so the backend's
continuous batching decodes them side by side; requests that arrive while a call runs form the next one. A sampled
request (temperature > 0) runs alone: the backend draws every row of a call from one seeded generator, so sharing
a call would make a request's answer depend on what else arrived. On a GPU pool use vLLM or TGI, which also admit
new requests into a running batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import queue
import socket
import threading
import time
import uuid
from concurrent.futures import Future

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from codepmp.generate.backend import Completion, Sampling, TransformersBackend

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
"""How long a stopping server waits for requests in flight before it drops them."""


def parse_request(body: object, served: list[str]) -> tuple[str, str, Sampling]:
    """The model name, the prompt and the sampling of a chat completion request; ValueError or TypeError for a
    malformed request, LookupError for a model not in `served`."""
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    if len(messages) != 1 or messages[0].get("role", "user") != "user":
        raise ValueError("this server takes exactly one user message per request")
    stop = body.get("stop") or ()
    sampling = Sampling(max_new_tokens=int(body.get("max_tokens", 256)),
                        temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                        seed=int(body.get("seed", 0)),
                        stop=(stop,) if isinstance(stop, str) else tuple(str(s) for s in stop))
    if sampling.max_new_tokens < 1:
        raise ValueError("'max_tokens' must be at least 1")
    name = body.get("model") or served[0]
    if name not in served:
        raise LookupError(f"model '{name}' is not served here (served: {', '.join(served)})")
    return name, messages[0]["content"], sampling


class ModelWorker:
    """One model's generation thread. `submit` queues a prompt and returns a future of its completion; the thread
    takes every request waiting, groups them by sampling and runs each group as one `complete` call."""

    def __init__(self, name: str, backend: TransformersBackend):
        self.name, self.backend = name, backend
        self.waiting: queue.SimpleQueue[tuple[str, Sampling, Future] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=f"generate-{name}", daemon=True)
        self.thread.start()

    def submit(self, prompt: str, sampling: Sampling) -> Future[Completion]:
        """A future of `prompt`'s completion under `sampling`."""
        done: Future[Completion] = Future()
        self.waiting.put((prompt, sampling, done))
        return done

    def close(self) -> None:
        """Stop after the call in progress; requests still waiting fail."""
        self.waiting.put(None)

    def _run(self) -> None:
        while True:
            requests = [self.waiting.get()]
            while not self.waiting.empty():
                requests.append(self.waiting.get())
            if None in requests:
                for _, _, done in filter(None, requests):
                    if done.set_running_or_notify_cancel():
                        done.set_exception(RuntimeError("the server is shutting down"))
                return
            for sampling, group in self._groups(requests):
                self._complete(sampling, group)

    @staticmethod
    def _groups(requests: list[tuple[str, Sampling, Future]]) -> list[tuple[Sampling, list]]:
        """Requests that may share a `complete` call without changing any answer, oldest group first. Greedy
        decoding ignores the seed and top_p, so those are cleared to let greedy requests with different seeds
        (the HTTP client sends seed + index) meet; a sampled request is a group of its own."""
        groups: dict[tuple, tuple[Sampling, list]] = {}
        for n, (prompt, sampling, done) in enumerate(requests):
            if sampling.temperature <= 0:
                sampling = dataclasses.replace(sampling, temperature=0.0, top_p=1.0, seed=0)
                key = dataclasses.astuple(sampling)
            else:
                key = (n,)
            groups.setdefault(key, (sampling, []))[1].append((prompt, done))
        return list(groups.values())

    def _complete(self, sampling: Sampling, group: list[tuple[str, Future]]) -> None:
        running = [(prompt, done) for prompt, done in group if done.set_running_or_notify_cancel()]
        if not running:
            return
        try:
            completions = self.backend.complete([prompt for prompt, _ in running], sampling, desc="serve")
        except Exception as exc:  # every waiting request gets the failure rather than the thread dying
            log.exception("generation with %s failed for %d request(s)", self.name, len(running))
            for _, done in running:
                done.set_exception(exc)
            return
        for (_, done), completion in zip(running, completions, strict=True):
            done.set_result(completion)


def _error(status: int, message: str, kind: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, **({"type": kind} if kind else {})}}, status_code=status)


def build_app(workers: dict[str, ModelWorker]) -> FastAPI:
    """The FastAPI application answering for `workers` (model name to its worker)."""
    # No generated docs or schema routes: the API is OpenAI's, documented there.
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, exc: HTTPException):
        # A wrong method on a known path is as much "no route" to an OpenAI client as an unknown path.
        if exc.status_code in (404, 405):
            return _error(404, f"no route {request.url.path}")
        return _error(exc.status_code, str(exc.detail))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model"} for name in workers]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            name, prompt, sampling = parse_request(json.loads(await request.body() or b"{}"), list(workers))
        except LookupError as exc:
            return _error(404, str(exc), "model_not_found")
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc), "invalid_request_error")
        try:
            done = await asyncio.wrap_future(workers[name].submit(prompt, sampling))
        except Exception as exc:  # a 5xx, which the client retries
            return _error(500, f"generation failed: {exc}", "server_error")
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                             "finish_reason": "stop" if done.finished else "length"}],
                "usage": {"completion_tokens": done.tokens}}

    return app


class CompletionServer:
    """The server for `backends` (name to backend), listening from construction on (port 0: a free one).
    `serve_forever()` blocks; `start()` serves from a background thread until `stop()`; as a context manager
    it starts and stops."""

    def __init__(self, backends: dict[str, TransformersBackend], host: str = "127.0.0.1", port: int = 0):
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        self.socket = socket.socket(family, kind, proto)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(address)
        self.socket.listen()
        bound, port = self.socket.getsockname()[:2]
        self.url = f"http://{f'[{bound}]' if ':' in bound else bound}:{port}/v1"
        self.backends = backends
        self.workers = {name: ModelWorker(name, backend) for name, backend in backends.items()}
        config = uvicorn.Config(build_app(self.workers), lifespan="off", access_log=False, log_config=None,
                                log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        self.uvicorn = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Serve until `stop()` or, on the main thread, SIGINT or SIGTERM; then close."""
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.close()

    def start(self, timeout_s: float = 30.0) -> CompletionServer:
        """Serve from a background thread; returns once requests are being answered."""
        self.thread = threading.Thread(target=self.serve_forever, name="codepmp-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.uvicorn.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving (requests in flight get `SHUTDOWN_GRACE_S` to finish) and wait for the server thread."""
        self.uvicorn.should_exit = True
        if self.thread is not None:
            self.thread.join()
        self.close()

    def close(self) -> None:
        """Stop the model workers and release the port; `serve_forever` and `stop` call it once serving ends."""
        for worker in self.workers.values():
            worker.close()
        self.socket.close()

    def __enter__(self) -> CompletionServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def serve(models: list[str], host: str = "127.0.0.1", port: int = 8000, batch_size: int = 16) -> None:
    """Load `models` (aliases, folders, hub ids or s3://), each served under its spec, until interrupted;
    `batch_size` rows of concurrent requests decode together."""
    server = CompletionServer({m: TransformersBackend(m, batch_size=batch_size) for m in models}, host, port)
    print(f"codepmp serve: {', '.join(models)} at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
