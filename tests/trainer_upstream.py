"""Kubeflow Trainer as it is upstream, for tests: the TrainJob CRD schemas and `torch-distributed` runtimes of
Trainer v2.0.0-v2.3.0 (tests/upstream/kubeflow-trainer, with their NOTICE), a checker with the API server's
structural-schema semantics, and a stand-in Kubernetes API that validates TrainJobs against one of those
schemas the way kube-apiserver does.

Pruning semantics: a field the schema does not declare is dropped silently (or refused, when the request
asks for `fieldValidation=Strict`) unless its object preserves unknown fields; `metadata` at the root is
the server's own ObjectMeta. `schema_problems` lists every field that would be pruned or is of the wrong
type, so a test can fail on either.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

UPSTREAM = Path(__file__).resolve().parent / "upstream" / "kubeflow-trainer"
VERSIONS = ("v2.0.0", "v2.1.0", "v2.2.0", "v2.3.0")
PATH_PREFIX = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/"


@functools.cache
def trainjob_schema(version: str) -> dict:
    """The openAPIV3Schema of `trainjobs.trainer.kubeflow.org/v1alpha1` at that Trainer release."""
    crd = yaml.safe_load((UPSTREAM / version / "trainer.kubeflow.org_trainjobs.yaml").read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return served["schema"]["openAPIV3Schema"]


@functools.cache
def torch_runtime(version: str) -> dict:
    """The release's `torch-distributed` ClusterTrainingRuntime. From v2.2 on it ships as a Helm template:
    its template comment and template-only lines (labels added at install time) are left out."""
    text = (UPSTREAM / version / "torch-distributed.yaml").read_text()
    text = re.sub(r"\{\{-? /\*.*?\*/ -?\}\}", "", text, flags=re.S)  # the template's license comment
    return yaml.safe_load("\n".join(line for line in text.splitlines() if "{{" not in line))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_ok(kind: str | None, value) -> bool:
    return {"object": lambda: isinstance(value, dict), "array": lambda: isinstance(value, list),
            "string": lambda: isinstance(value, str), "integer": lambda: _is_int(value),
            "number": lambda: _is_int(value) or isinstance(value, float),
            "boolean": lambda: isinstance(value, bool)}.get(kind, lambda: True)()


def schema_problems(schema: dict, value, path: str = "") -> list[str]:
    """Every place where the API server would prune `value` or reject its type, against a structural schema."""
    where = path or "<root>"
    if value is None:
        return [] if schema.get("nullable") else [f"{where}: null is not allowed"]
    if schema.get("x-kubernetes-int-or-string"):
        if not (_is_int(value) or isinstance(value, str)):
            return [f"{where}: must be an integer or a string, got {value!r}"]
        if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
            return [f"{where}: {value!r} does not match {schema['pattern']}"]
        return []
    kind = schema.get("type")
    if not _type_ok(kind, value):
        return [f"{where}: must be of type {kind}, got {type(value).__name__} {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        return [f"{where}: {value!r} does not match {schema['pattern']}"]
    problems: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key in schema.get("required") or []:
            if key not in value:
                problems.append(f"{path}.{key}: required")
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if key in properties:
                if path == "" and key == "metadata":
                    continue  # the server's ObjectMeta, not the CRD's to prune
                problems += schema_problems(properties[key], item, child)
            elif isinstance(extra, dict):
                problems += schema_problems(extra, item, child)
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and extra is not True:
                problems.append(f"{child}: unknown field, the API server would prune it")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += schema_problems(schema.get("items") or {}, item, f"{path}[{index}]")
        keys = schema.get("x-kubernetes-list-map-keys")
        if schema.get("x-kubernetes-list-type") == "map" and keys:
            seen = [tuple(item.get(k) for k in keys) for item in value if isinstance(item, dict)]
            if len(seen) != len(set(seen)):
                problems.append(f"{where}: duplicate entries for list-map keys {keys}")
    return problems


def unknown_fields(schema: dict, value) -> list[str]:
    """The fields of `value` the server would prune, in kube-apiserver's strict-decoding spelling."""
    return [p.split(":", 1)[0] for p in schema_problems(schema, value) if "unknown field" in p]


def _merge(base, patch):
    """A strategic-merge-like patch as the Trainer applies overrides: maps merge, lists of named items merge
    by name, other lists are appended to."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        if all(isinstance(item, dict) and "name" in item for item in base + patch):
            merged = {item["name"]: item for item in base}
            for item in patch:
                merged[item["name"]] = _merge(merged[item["name"]], item) if item["name"] in merged else item
            return list(merged.values())
        return base + copy.deepcopy(patch)
    return copy.deepcopy(patch)


def node_pod_template(job: dict, version: str) -> dict:
    """The pod template the Trainer would give the runtime's `node` job for this TrainJob: the runtime's own
    template, the trainer's image, command, env and resources on its `node` container, then the job's
    overrides (podTemplateOverrides in v2.1, runtimePatches from v2.2). Overrides that target a job or
    container the runtime does not have change nothing, as in the Trainer."""
    runtime = torch_runtime(version)
    (node,) = [j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"] if j["name"] == "node"]
    pod = copy.deepcopy(node["template"]["spec"]["template"])
    trainer = job["spec"]["trainer"]
    for container in pod["spec"]["containers"]:
        if container["name"] == "node":
            container.update(image=trainer["image"], command=trainer["command"], env=trainer.get("env", []),
                             resources=trainer.get("resourcesPerNode", {}))
    spec = job["spec"]
    names = {c["name"] for c in pod["spec"]["containers"]}
    for override in spec.get("podTemplateOverrides") or []:
        if "node" in [t["name"] for t in override["targetJobs"]]:
            pod = _merge(pod, {"metadata": override.get("metadata", {}), "spec": _known(override["spec"], names)})
    for patch in spec.get("runtimePatches") or []:
        jobs = patch.get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {}).get("replicatedJobs", [])
        for replicated in jobs:
            if replicated["name"] == "node":
                template = replicated.get("template", {}).get("spec", {}).get("template", {})
                pod = _merge(pod, {"metadata": template.get("metadata", {}),
                                   "spec": _known(template.get("spec", {}), names)})
    return pod


def _known(pod_spec: dict, containers: set[str]) -> dict:
    """Overrides of containers the runtime does not have are dropped, not added."""
    return {**pod_spec, "containers": [c for c in pod_spec.get("containers", []) if c["name"] in containers]}


class FakeKubeApi:
    """The TrainJob part of a Kubernetes API server with one Trainer release's CRD installed (or none, with
    `version=None`): create (with `dryRun=All` and `fieldValidation=Strict|Ignore`) and get. Objects are
    validated against the release's schema as kube-apiserver does: unknown fields refused under Strict
    (HTTP 400, its strict-decoding message) and pruned otherwise, wrong types refused (HTTP 422).
    `on_create(job)` runs for every stored job, e.g. to play the Trainer's part."""

    def __init__(self, version: str | None, on_create: Callable[[dict], None] | None = None):
        self.version, self.on_create = version, on_create
        self.jobs: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeKubeApi:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def created(self) -> list[dict]:
        """Query parameters of every POST, in order."""
        return [query for method, _, query in self.requests if method == "POST"]

    def handle(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, dict | str]:
        with self.lock:
            self.requests.append((method, path, query))
            if self.version is None or not path.startswith(PATH_PREFIX) or "/trainjobs" not in path:
                return 404, "404 page not found"
            if method == "GET":
                name = path.rsplit("/", 1)[-1]
                if name not in self.jobs:
                    return 404, _status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')
                return 200, self.jobs[name]
            job = json.loads(body)
            name = job["metadata"]["name"]
            schema = trainjob_schema(self.version)
            unknown = unknown_fields(schema, job)
            if unknown and query.get("fieldValidation") == "Strict":
                fields = ", ".join(f'unknown field "{f}"' for f in unknown)
                return 400, _status(400, "BadRequest", f'TrainJob in version "v1alpha1" cannot be handled as a '
                                                       f"TrainJob: strict decoding error: {fields}")
            job = prune(schema, job)
            invalid = schema_problems(schema, job)
            if invalid:
                return 422, _status(422, "Invalid", f'TrainJob.trainer.kubeflow.org "{name}" is invalid: '
                                                    + "; ".join(invalid))
            if name in self.jobs:
                return 409, _status(409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{name}" already exists')
            if query.get("dryRun") != "All":
                self.jobs[name] = job
                if self.on_create:
                    self.on_create(job)
            return 201, job

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code, answer = fake.handle(method, url.path, query, body)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._serve("GET")

            def do_POST(self):  # noqa: N802
                self._serve("POST")

            def log_message(self, *args):
                pass

        return Handler


def prune(schema: dict, value, root: bool = True):
    """`value` as the server stores it: every field the schema does not declare removed."""
    if isinstance(value, dict) and isinstance(schema, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        kept = {}
        for key, item in value.items():
            if root and key == "metadata":
                kept[key] = item
            elif key in properties:
                kept[key] = prune(properties[key], item, False)
            elif isinstance(extra, dict):
                kept[key] = prune(extra, item, False)
            elif schema.get("x-kubernetes-preserve-unknown-fields") or extra is True:
                kept[key] = item
        return kept
    if isinstance(value, list):
        return [prune(schema.get("items") or {}, item, False) for item in value]
    return value


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
