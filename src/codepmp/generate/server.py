"""A small OpenAI-compatible server over the transformers backend: one model shared by several stages or users.

    codepmp serve --model smollm2-135m-instruct --model gemma3-270m --port 8000   # OpenAIBackend at :8000/v1

Endpoints: `POST /v1/chat/completions` (the request's `model` picks one of the served models; the message goes
through its chat template, as in the transformers backend), `GET /v1/models`, `GET /health`. Requests are answered one at a time (the model is not
thread-safe); on a GPU pool use vLLM or TGI, which batch across requests. Listens on 127.0.0.1 unless told
otherwise.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from codepmp.generate.backend import Sampling, TransformersBackend

log = logging.getLogger(__name__)


class CompletionServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, backends: dict[str, TransformersBackend], host: str = "127.0.0.1", port: int = 0):
        super().__init__((host, port), _Handler)
        self.backends, self.lock = backends, threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def complete(self, body: dict) -> dict:
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
        name = body.get("model") or next(iter(self.backends))
        if name not in self.backends:
            raise LookupError(f"model '{name}' is not served here (served: {', '.join(self.backends)})")
        with self.lock:
            [done] = self.backends[name].complete([messages[0]["content"]], sampling, desc="serve")
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                             "finish_reason": "stop" if done.finished else "length"}],
                "usage": {"completion_tokens": done.tokens}}


class _Handler(BaseHTTPRequestHandler):
    server: CompletionServer

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._reply(200, {"object": "list", "data": [{"id": name, "object": "model"} for name in self.server.backends]})
        else:
            self._reply(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/v1/chat/completions":
            self._reply(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            self._reply(200, self.server.complete(body))
        except LookupError as exc:
            self._reply(404, {"error": {"message": str(exc), "type": "model_not_found"}})
        except (ValueError, TypeError) as exc:
            self._reply(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def serve(models: list[str], host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load `models` (aliases, folders, hub ids or s3://), each served under its spec, until interrupted."""
    server = CompletionServer({m: TransformersBackend(m, batch_size=1) for m in models}, host, port)
    print(f"codepmp serve: {', '.join(models)} at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
