"""A fake Kubeflow Pipelines v2beta1 API server for the `codepmp submit` tests, held to upstream's contract.

Every request is checked against the upstream swagger (upstream/kfp_api_single_file.swagger.json, KFP 2.17.0, see
upstream/NOTICE): the operation must exist, its query parameters must be declared, a JSON body (and a list filter)
may only use declared fields of the declared types, an upload must carry its declared file field. A request that
breaks the contract is answered 400 and recorded in `violations`. Answers are the generated kfp_server_api models,
serialized by the generated client and checked against the same swagger. State lives in memory.
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import kfp_server_api as kfp

SWAGGER = json.loads((Path(__file__).parent / "upstream" / "kfp_api_single_file.swagger.json").read_text())
API = "/apis/v2beta1"
LOGIN_PATH = "/dex/auth/local"
_CODEC = kfp.ApiClient()


def serialize(model) -> dict:
    return _CODEC.sanitize_for_serialization(model)


def deserialize(data: bytes, model: str):
    """A generated model from JSON, the way the generated client reads answers."""
    return _CODEC.deserialize(SimpleNamespace(data=data), model)


def schema_errors(value, schema: dict, where: str) -> list[str]:
    """Where `value` breaks a swagger 2.0 schema: unknown fields, wrong types, values outside an enum."""
    if "$ref" in schema:
        return schema_errors(value, SWAGGER["definitions"][schema["$ref"].rsplit("/", 1)[1]], where)
    kind = schema.get("type")
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    python_type = {"string": str, "boolean": bool, "integer": int, "number": (int, float), "array": list,
                   "object": dict}.get(kind)
    if python_type and (not isinstance(value, python_type) or (kind in ("integer", "number") and isinstance(value, bool))):
        return [f"{where}: {value!r} is not a {kind}"]
    if kind == "array":
        return [e for i, item in enumerate(value) for e in schema_errors(item, schema.get("items", {}), f"{where}[{i}]")]
    if not isinstance(value, dict):
        return []
    properties, extra = schema.get("properties"), schema.get("additionalProperties")
    errors = []
    for key, item in value.items():
        if properties and key in properties:
            errors += schema_errors(item, properties[key], f"{where}.{key}")
        elif extra is not None:
            errors += schema_errors(item, extra, f"{where}.{key}")
        elif properties is not None:
            errors.append(f"{where}: field {key!r} is not in the schema")
    return errors


def find_operation(method: str, path: str) -> dict | None:
    for template, operations in SWAGGER["paths"].items():
        pattern = "".join("[^/:]+" if part.startswith("{") else re.escape(part)
                          for part in re.split(r"(\{[^}]+\})", template))
        if re.fullmatch(pattern, path) and method.lower() in operations:
            return operations[method.lower()]
    return None


def uploaded(headers: dict, body: bytes) -> dict[str, tuple[str, bytes]]:
    """{field: (filename, content)} of a multipart/form-data body, as the KFP upload handlers read it."""
    if not headers.get("content-type", "").startswith("multipart/form-data"):
        return {}
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
            for part in message.iter_parts()}


def request_errors(operation: dict, query: dict[str, str], headers: dict[str, str], body: bytes) -> list[str]:
    """How a request breaks its operation's declared parameters."""
    params = {p["name"]: p for p in operation.get("parameters", [])}
    errors = [f"query parameter {name!r} is not declared" for name in query if params.get(name, {}).get("in") != "query"]
    errors += [f"query parameter {name!r}={value!r} is not an integer" for name, value in query.items()
               if params.get(name, {}).get("type") == "integer" and not value.lstrip("-").isdigit()]
    body_param = next((p for p in params.values() if p["in"] == "body"), None)
    files = [name for name, p in params.items() if p["in"] == "formData"]
    if body_param:
        try:
            errors += schema_errors(json.loads(body), body_param["schema"], "body")
        except ValueError:
            errors.append("the body is not JSON")
    elif files:
        parts = uploaded(headers, body)
        errors += [f"multipart field {name!r} is missing" for name in files if name not in parts]
    elif body:
        errors.append("a body where the operation takes none")
    return errors


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Names lower-cased."""
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)


def _status(code: int, grpc_code: int, message: str) -> tuple[int, kfp.GoogleRpcStatus]:
    return code, kfp.GoogleRpcStatus(code=grpc_code, message=message)


@dataclass
class FakeKfp:
    """In-memory KFP API state; `url` is set once the server listens."""

    url: str = ""
    token: str | None = None
    """When set, every request must carry `authorization: Bearer <token>` (401 otherwise)."""
    multi_user: bool = False
    tag_name: str | None = "2.17.0"
    """What the healthz handler reports as the backend's version (None: the field is left out)."""
    login_redirect: bool = False
    """Stand in for an auth proxy in front of the API: every API request is redirected to an HTML login page."""
    states: list[str] = field(default_factory=lambda: ["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"])
    """States a run goes through, one per GET of it; the last one stays."""
    run_error: str = ""
    unavailable_polls: int = 0
    """GETs of a run answered 503 by the mesh (plain text) before the states start: an API server restarting."""
    requests: list[Recorded] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    pipelines: dict[str, kfp.V2beta1Pipeline] = field(default_factory=dict)
    versions: dict[str, kfp.V2beta1PipelineVersion] = field(default_factory=dict)
    packages: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    """Uploaded (filename, content) by pipeline version id."""
    experiments: dict[str, kfp.V2beta1Experiment] = field(default_factory=dict)
    runs: dict[str, kfp.V2beta1Run] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def called(self, method: str, route: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == API + route]

    def handle(self, method: str, path: str, query: dict, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        """(status, extra headers, body) for one request."""
        with self.lock:
            self.requests.append(Recorded(method, path, query, headers, body))
            if self.login_redirect:
                if path == LOGIN_PATH:
                    return 200, {"Content-Type": "text/html"}, b"<!DOCTYPE html><title>Log in</title><form></form>"
                return 302, {"Location": LOGIN_PATH}, b""
            if self.token and headers.get("authorization") != f"Bearer {self.token}":
                return self._json(*_status(401, 16, "Unauthenticated: request has no valid bearer token"))
            route = path.removeprefix(API)
            if (method == "GET" and route.startswith("/runs/") and route.split("/")[2] in self.runs
                    and self.unavailable_polls > 0):
                self.unavailable_polls -= 1
                return 503, {"Content-Type": "text/plain"}, b"upstream connect error or disconnect/reset before headers"
            operation = find_operation(method, path)
            if operation is None:
                self.violations.append(f"{method} {path}: no such operation in the upstream swagger")
                return self._json(*_status(404, 5, f"no operation {method} {path}"))
            problems = request_errors(operation, query, headers, body)
            if problems:
                self.violations += [f"{method} {path}: {problem}" for problem in problems]
                return self._json(*_status(400, 3, "; ".join(problems)))
            status, answer = self._answer(method, route, query, headers, body)
            payload = serialize(answer)
            schema = (operation["responses"].get(str(status)) or operation["responses"]["default"])["schema"]
            self.violations += [f"answer to {method} {path}: {e}" for e in schema_errors(payload, schema, "answer")]
            if route == "/healthz" and self.tag_name is not None:
                # The backend's healthz handler (backend/src/apiserver/main.go) adds its build to the declared fields.
                payload = {**payload, "commit_sha": "4a3592cb2dd0a91a4652ab93893ec8beda1f3158", "tag_name": self.tag_name}
            return self._json(status, payload)

    @staticmethod
    def _json(status: int, payload) -> tuple[int, dict, bytes]:
        return status, {"Content-Type": "application/json"}, json.dumps(serialize(payload)).encode()

    def _answer(self, method: str, route: str, query: dict, headers: dict, body: bytes):
        now = datetime.now(timezone.utc)
        if (method, route) == ("GET", "/healthz"):
            return 200, kfp.V2beta1GetHealthzResponse(multi_user=self.multi_user, pipeline_store="database")
        if (method, route) == ("GET", "/pipelines"):
            found = self._matching(self.pipelines.values(), query)
            return 200, kfp.V2beta1ListPipelinesResponse(pipelines=found or None, total_size=len(found) or None)
        if (method, route) == ("POST", "/pipelines/upload"):
            pipeline = kfp.V2beta1Pipeline(pipeline_id=str(uuid.uuid4()), name=query["name"],
                                           display_name=query["name"], description=query.get("description"),
                                           namespace=query.get("namespace"), created_at=now)
            self.pipelines[pipeline.pipeline_id] = pipeline
            self._version(pipeline.pipeline_id, query["name"], None, headers, body)  # KFP's first version
            return 200, pipeline
        if (method, route) == ("POST", "/pipelines/upload_version"):
            pipeline_id = query.get("pipelineid")
            if pipeline_id not in self.pipelines:
                return _status(404, 5, f"pipeline {pipeline_id} not found")
            if any(v.pipeline_id == pipeline_id and v.name == query.get("name") for v in self.versions.values()):
                return _status(409, 6, f"version name {query.get('name')} already exists")
            return 200, self._version(pipeline_id, query["name"], query.get("description"), headers, body)
        if (method, route) == ("GET", "/experiments"):
            found = self._matching(self.experiments.values(), query)
            return 200, kfp.V2beta1ListExperimentsResponse(experiments=found or None, total_size=len(found) or None)
        if (method, route) == ("POST", "/experiments"):
            experiment = deserialize(body, "V2beta1Experiment")
            if self.multi_user and not experiment.namespace:
                return _status(400, 3, "multi-user mode requires a namespace for the experiment")
            experiment.experiment_id, experiment.created_at = str(uuid.uuid4()), now
            self.experiments[experiment.experiment_id] = experiment
            return 200, experiment
        if (method, route) == ("POST", "/runs"):
            run = deserialize(body, "V2beta1Run")
            if run.experiment_id not in self.experiments:
                return _status(400, 3, f"experiment {run.experiment_id} not found")
            reference = run.pipeline_version_reference
            if reference is None or reference.pipeline_version_id not in self.versions:
                return _status(400, 3, "the run references no existing pipeline version")
            run.run_id, run.state, run.created_at = str(uuid.uuid4()), self.states[0], now
            self.runs[run.run_id] = run
            return 200, run
        if method == "GET" and route.startswith("/runs/") and route.split("/")[2] in self.runs:
            run_id = route.split("/")[2]
            self.polls[run_id] = self.polls.get(run_id, -1) + 1
            state = self.states[min(self.polls[run_id], len(self.states) - 1)]
            run = copy.deepcopy(self.runs[run_id])
            run.state = state
            if state == "FAILED" and self.run_error:
                run.error = kfp.GoogleRpcStatus(code=2, message=self.run_error)
            return 200, run
        return _status(404, 5, f"{method} {route}: not found")

    def _matching(self, items, query: dict) -> list:
        """Items passing the list filter (display_name EQUALS only) within the requested namespace."""
        found = list(items)
        if "filter" in query:
            try:
                spec = json.loads(query["filter"])
            except ValueError:
                self.violations.append(f"filter {query['filter']!r} is not JSON")
                return []
            self.violations += schema_errors(spec, {"$ref": "#/definitions/v2beta1Filter"}, "filter")
            for predicate in spec.get("predicates", []):
                if (predicate.get("key"), predicate.get("operation")) != ("display_name", "EQUALS"):
                    self.violations.append(f"the fake implements display_name EQUALS only, got {predicate}")
                found = [item for item in found if item.display_name == predicate.get("string_value")]
        if "namespace" in query:
            found = [item for item in found if (item.namespace or "") == query["namespace"]]
        return found

    def _version(self, pipeline_id: str, name: str, description: str | None, headers: dict,
                 body: bytes) -> kfp.V2beta1PipelineVersion:
        version = kfp.V2beta1PipelineVersion(pipeline_id=pipeline_id, pipeline_version_id=str(uuid.uuid4()),
                                             name=name, display_name=name, description=description,
                                             created_at=datetime.now(timezone.utc))
        self.versions[version.pipeline_version_id] = version
        self.packages[version.pipeline_version_id] = uploaded(headers, body)["uploadfile"]
        return version


@contextmanager
def serving(fake: FakeKfp) -> Iterator[FakeKfp]:
    """Serve `fake` on a free loopback port for the duration of the block."""

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, data = fake.handle(self.command, url.path, query, headers, body)
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
