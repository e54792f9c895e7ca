"""OpenAI-compatible HTTP generation backend: any vLLM / TGI / KServe server in the cluster, or `codepmp serve`.

    from codepmp.generate.http_backend import OpenAIBackend
    backend = OpenAIBackend("http://vllm.models:8000/v1", "deepseek-ai/deepseek-coder-6.7b-instruct")
    texts = backend.generate(prompts, Sampling(max_new_tokens=1024, temperature=0.7))

Each prompt is one `/chat/completions` request with a single user message, so the server applies the model's
chat template exactly as the transformers backend does. Requests run concurrently from a bounded pool
(`concurrency`); 429 and 5xx answers, timeouts and connection errors are retried with exponential backoff
(honouring `Retry-After`), and a request that still fails raises `ServiceError` naming the endpoint. The API
key, if any, comes from the environment variable named by `api_key_env` and is never logged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from codepmp.errors import ServiceError
from codepmp.retry import RetryLater, RetryPolicy, retry_after_s
from codepmp.progress import progress
from codepmp.generate.backend import Backend, Completion, Sampling

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class OpenAIBackend(Backend):
    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 max_retries: int = 5, timeout_s: float = 600.0, backoff_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep):
        import requests

        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.concurrency, self.timeout_s = model, max(1, concurrency), timeout_s
        self.retry = RetryPolicy(first_delay_s=backoff_s, attempts=max(1, max_retries), sleep=sleep)
        self.session = requests.Session()
        self.session.headers["Content-Type"] = "application/json"
        key = os.environ.get(api_key_env, "")
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.url!r}, {self.model!r})"

    def complete(self, prompts: list[str], sampling: Sampling, desc: str = "generate") -> list[Completion]:
        """Completions of `prompts`, in order; greedy when `sampling.temperature` is 0. A completion the server
        reports with `finish_reason` "length" hit `max_new_tokens`."""
        def one(index: int) -> Completion:
            body = {"model": self.model, "messages": [{"role": "user", "content": prompts[index]}],
                    "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                    "top_p": sampling.top_p, "seed": sampling.seed + index}
            if sampling.stop:
                body["stop"] = list(sampling.stop)
            answer = self._post(body)
            try:
                choice = answer["choices"][0]
                text = choice["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise ServiceError(f"{self.url} answered without choices[0].message.content") from None
            tokens = (answer.get("usage") or {}).get("completion_tokens") or 0
            return Completion(text.strip(), finished=choice.get("finish_reason") != "length", tokens=int(tokens))

        with ThreadPoolExecutor(self.concurrency) as pool:
            results = pool.map(one, range(len(prompts)))
            return list(progress(results, total=len(prompts), desc=f"{desc} ({self.model})", unit="prompt"))

    def _post(self, body: dict) -> dict:
        import requests

        def attempt() -> dict:
            try:
                response = self.session.post(self.url, json=body, timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise RetryLater(type(exc).__name__) from exc
            if response.status_code in RETRY_STATUSES:
                raise RetryLater(f"HTTP {response.status_code}", retry_after_s(response.headers, time.time()))
            if response.status_code != 200:
                raise ServiceError(f"{self.url} refused the request: HTTP {response.status_code} "
                                   f"{response.text[:200]}")
            try:
                return response.json()
            except ValueError:
                raise ServiceError(f"{self.url} answered with invalid JSON") from None

        def announce(error: Exception, delay: float, failures: int) -> None:
            log.warning("%s: %s, retrying in %.1fs (attempt %d of %d)", self.url, error, delay, failures,
                        self.retry.attempts)

        def exhausted(error: Exception) -> ServiceError:
            return ServiceError(f"{self.url} failed {self.retry.attempts} times, last: {error}")

        return self.retry.call(attempt, on_retry=announce, give_up=exhausted)
