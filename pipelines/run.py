"""Run the pipeline locally through kfp.local, compile it to YAML, or submit it to Kubeflow Pipelines.

    python -m codepmp.cli run --profile local      # what `make run` does
"""

import os
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from codepmp.errors import ServiceError


def run_local(profile: str, overrides: dict, run_name: str, pipeline_root: str) -> None:
    """Execute every stage as a local subprocess in this Python environment (no containers)."""
    from kfp import local

    from pipelines.pipeline import build

    Path(pipeline_root).mkdir(parents=True, exist_ok=True)
    # The subprocess runner warns that component images are not Python images; locally they are unused.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    build()(profile=profile, overrides=overrides, run_name=run_name)


def compile_pipeline(out: str, cluster_spec: str | None = None) -> str:
    """Write the pipeline YAML with Kubernetes placement from a ClusterSpec YAML (defaults if none)."""
    import yaml
    from kfp import compiler

    from pipelines.cluster import ClusterSpec
    from pipelines.pipeline import build

    spec = ClusterSpec(**(yaml.safe_load(Path(cluster_spec).read_text()) or {})) if cluster_spec else ClusterSpec()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(spec), out)
    return out


def submit(package: str, profile: str, overrides: dict, run_name: str, experiment: str = "codepmp") -> str:
    """Create a run on the KFP endpoint in KFP_HOST; returns the run id."""
    host = os.environ.get("KFP_HOST", "")
    if not host:
        raise ServiceError("KFP_HOST is not set: export KFP_HOST=https://<kubeflow-host>/pipeline")
    try:
        urllib.request.urlopen(f"{host.rstrip('/')}/apis/v2beta1/healthz", timeout=10)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if not isinstance(exc, urllib.error.HTTPError):
            raise ServiceError(f"KFP_HOST={host} is unreachable: {getattr(exc, 'reason', exc)}") from None
    import kfp

    client = kfp.Client(host=host, existing_token=os.environ.get("KFP_TOKEN") or None)
    run = client.create_run_from_pipeline_package(
        package, arguments={"profile": profile, "overrides": overrides, "run_name": run_name},
        run_name=run_name, experiment_name=experiment)
    print(f"submitted run {run.run_id} to {host}", file=sys.stderr)
    return run.run_id
