"""`codepmp` command line: the embedded stack, the whole pipeline, single stages, compile, submit, promote.

    codepmp run --profile local                  # whole pipeline through kfp.local (make run)
    codepmp up | down | status                   # embedded S3 + MLflow stack
    codepmp crawl --out DIR|s3://B/P [--set crawl.max_files=100]   # --rank R with --set crawl.world_size=N,
    codepmp crawl-merge --out DIR|s3://B/P                         # then crawl-merge once all ranks are done
    codepmp synthesize --crawl DIR --out DIR    # every shard, then the merge; rerun to resume (cache in DIR/cache)
    codepmp compile --out build/codepmp.yaml     # then: codepmp submit --package build/codepmp.yaml [--wait]
    codepmp serve --model smollm2-135m-instruct [--port 8000]   # OpenAI-compatible server for synthesis
    codepmp promote --version 3 [--force --why 'rollback: v4 regressed']
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from codepmp.config import load_config, parse_set
from codepmp.env import SERVICE_VARS
from codepmp.errors import CodepmpError, InputError
from codepmp.stages import STAGES

def _ensure_services(start_embedded: bool = True) -> str:
    """Use the services named by the client variables; start the embedded stack when none are named."""
    if all(os.environ.get(v) for v in SERVICE_VARS):
        return "configured"
    if not start_embedded:
        missing = [v for v in SERVICE_VARS if not os.environ.get(v)]
        raise CodepmpError(f"{', '.join(missing)} not set: run `codepmp up` and source its env.sh")
    from codepmp.stack import Stack

    stack = Stack()
    stack.up()
    os.environ.update(stack.client_env())
    return "embedded"


def _preflight() -> None:
    """Fail in seconds, naming the endpoint, before any stage starts on a service that is down."""
    from codepmp.storage import ObjectStore
    from codepmp.tracking import check_tracking_server

    ObjectStore.from_env().ensure_bucket()
    check_tracking_server()


def cmd_up(args) -> None:
    from codepmp.stack import Stack

    stack = Stack()
    stack.up()
    for key, value in stack.client_env().items():
        print(f"export {key}={value}")


def cmd_down(args) -> None:
    from codepmp.stack import Stack

    print(json.dumps(Stack().down(), indent=2, default=str))


def cmd_status(args) -> None:
    from codepmp.stack import Stack

    print(json.dumps(Stack().status(), indent=2, default=str))


def cmd_run(args) -> None:
    from codepmp.report import print_summary
    from codepmp_kfp.pipelines.run import run_local

    load_config(args.profile, args.overrides)  # fail on bad keys before anything starts
    mode = _ensure_services()
    _preflight()
    run_name = args.run_name or f"{args.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(args.root).resolve() / run_name
    print(f"codepmp run {run_name}: profile={args.profile}, services={mode}, artifacts under {root}", flush=True)
    start = time.perf_counter()
    run_local(args.profile, args.overrides, run_name, str(root))
    print_summary(load_config(args.profile, args.overrides).experiment, run_name, root,
                  total_s=time.perf_counter() - start)


def _stage_cmd(spec):
    def run(args) -> None:
        from codepmp import stages

        load_config(args.profile, args.overrides)  # bad keys fail before any server is started or reached
        _ensure_services()
        options = {option: getattr(args, option) for option in spec.cli}
        kwargs = spec.from_cli(options) if spec.from_cli else options
        getattr(stages, spec.name)(args.profile, args.overrides, args.run_name or f"cli-{spec.name}", **kwargs)

    return run


def _add_stage_option(parser: argparse.ArgumentParser, option: str) -> None:
    if option == "rank":
        parser.add_argument("--rank", type=int, default=0, help="this worker's rank, 0 <= rank < crawl.world_size")
    else:
        parser.add_argument("--" + option.replace("_dir", "").replace("_", "-"), dest=option, required=True,
                            **({"choices": ["pmp", "control"]} if option == "variant" else {}))


def cmd_evaluate(args) -> None:
    """Score one or two reward models (folders, s3:// folders or registry models:/ URIs) on a run's reasoning
    tables (--data) or on a team's own labelled pool and/or pair files; nothing is registered."""
    import tempfile

    from codepmp import stages
    from codepmp.reasoning.external import external_tables
    from codepmp.registry import fetch_reward_model

    load_config(args.profile, args.overrides)  # bad keys fail before any server is started or reached
    if args.data and (args.pool or args.pairs):
        raise InputError("give either --data (a reasoning data folder) or --pool/--pairs files, not both")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _ensure_services()
    with tempfile.TemporaryDirectory(prefix="codepmp-evaluate-") as work:
        data_dir = args.data or str(external_tables(Path(work) / "data", args.pool, args.pool_domain, args.pairs))
        models = {name: fetch_reward_model(spec, Path(work) / name)
                  for name, spec in (("pmp", args.pmp), ("control", args.control)) if spec}
        stages.evaluate(args.profile, args.overrides, args.run_name or "cli-evaluate", models=models,
                        data_dir=data_dir, report_path=str(out / "report.html"),
                        results_path=str(out / "results.json"))


def cmd_compile(args) -> None:
    from codepmp_kfp.pipelines.run import compile_pipeline

    print(compile_pipeline(args.out, args.cluster_spec))


def cmd_submit(args) -> None:
    """Validate locally, check the endpoint, then compile (seconds): nothing is built for a cluster we cannot reach."""
    from codepmp_kfp.pipelines.run import KfpClient, compile_pipeline, run_parameters, submit, wait_for_run

    params = run_parameters(args.params, args.profile, args.overrides, args.run_name)
    load_config(params.profile, params.overrides)
    client = KfpClient.connect(args.namespace)
    package = args.package or compile_pipeline("build/codepmp.yaml", args.cluster_spec)
    run = submit(client, package, params, args.experiment, args.service_account)
    print(run.url, flush=True)
    if args.wait:
        wait_for_run(client, run.run_id, args.poll)


def cmd_serve(args) -> None:
    from codepmp.generate.server import serve

    serve(args.model, args.host, args.port, args.batch_size)


def cmd_promote(args) -> None:
    from codepmp.registry import promote

    _ensure_services(start_embedded=False)
    cfg = load_config(args.profile, args.overrides)
    print(json.dumps(promote(cfg.promote.registered_model, str(args.version), cfg.promote.alias,
                             cfg.evaluate.gate_metric, force=args.force, who=args.who, why=args.why),
                     indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codepmp", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help_text, config=True):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(fn=fn)
        if config:
            p.add_argument("--profile", default=os.environ.get("CODEPMP_PROFILE", "local"),
                           help="config profile: tiny | local | paper")
            p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                           help="override a config value, e.g. --set pretrain.lr=1e-5 (repeatable)")
            p.add_argument("--run-name", default="", help="groups MLflow runs and checkpoints")
        return p

    add("up", cmd_up, "start the embedded S3 + MLflow stack", config=False)
    add("down", cmd_down, "stop the embedded stack", config=False)
    add("status", cmd_status, "show the embedded stack", config=False)
    p = add("run", cmd_run, "run the whole pipeline locally through kfp.local")
    p.add_argument("--root", default=os.environ.get("CODEPMP_RUNS_DIR", "runs"), help="local artifact root")
    for spec in (s for s in STAGES.values() if s.cli):
        p = add(spec.name.replace("_", "-"), _stage_cmd(spec), f"run the {spec.name} stage alone on local folders")
        for option in spec.cli:
            _add_stage_option(p, option)
    p = add("evaluate", cmd_evaluate, "score reward models on reasoning data or on your own labelled pool/pair "
            "files (formats: codepmp/reasoning/external.py); registers nothing")
    p.add_argument("--pmp", required=True, metavar="MODEL",
                   help="reward model: a folder, an s3:// folder, or models:/<name>/<version> | models:/<name>@<alias>")
    p.add_argument("--control", default="", metavar="MODEL", help="a second reward model, compared paired with --pmp")
    p.add_argument("--data", default="", help="a reasoning data folder (the reasoning-data stage's output)")
    p.add_argument("--pool", default="", metavar="FILE", help="labelled best-of-N candidates (JSON lines)")
    p.add_argument("--pool-domain", default="gsm8k", choices=["gsm8k", "math"],
                   help="answer checker that reads the pool's final answers for majority voting")
    p.add_argument("--pairs", default="", metavar="FILE", help="preference pairs (JSON lines) for pairwise accuracy")
    p.add_argument("--out", required=True, help="folder for report.html and results.json")
    p = add("compile", cmd_compile, "compile the pipeline to KFP YAML", config=False)
    p.add_argument("--out", default="build/codepmp.yaml")
    p.add_argument("--cluster-spec", default=None, help="YAML of codepmp_kfp.pipelines.cluster.ClusterSpec fields")
    p = add("submit", cmd_submit, "upload the pipeline as a new version to KFP_HOST and start a run; prints its URL")
    p.add_argument("--package", default=None, help="compiled YAML (compiled now if omitted)")
    p.add_argument("--cluster-spec", default=None, help="YAML of ClusterSpec fields, used when compiling")
    p.add_argument("--params", default=None, metavar="FILE",
                   help="YAML of pipeline parameters (keys: profile, overrides, run_name); its profile replaces "
                        "--profile, --set and --run-name go over it")
    p.add_argument("--experiment", default=os.environ.get("KFP_EXPERIMENT", "codepmp"),
                   help="KFP experiment (created if missing)")
    p.add_argument("--namespace", default="", help="Kubeflow profile namespace (multi-user KFP; default $KFP_NAMESPACE)")
    p.add_argument("--service-account", default="", help="run the pods as this service account, e.g. codepmp-pipeline")
    p.add_argument("--wait", action="store_true", help="follow the run to its end; non-zero exit unless it succeeds")
    p.add_argument("--poll", type=float, default=15.0, help="seconds between state checks with --wait")
    p = add("serve", cmd_serve, "serve models over an OpenAI-compatible HTTP API (synthesize.backend=openai)",
            config=False)
    p.add_argument("--model", action="append", required=True, help="model to serve (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=16, help="rows of concurrent requests decoded together")
    p = add("promote", cmd_promote, "move the champion alias to a registered version: forced, or unforced only "
            "when both versions were evaluated on the same data and its interval lies above the champion's")
    p.add_argument("--version", required=True, type=int)
    p.add_argument("--force", action="store_true", help="skip the gate (needs --why; recorded on the version)")
    p.add_argument("--who", default=os.environ.get("USER", ""), help="who forces the promotion (default: $USER)")
    p.add_argument("--why", default="", help="why the promotion is forced (required with --force)")
    return parser


def _free_space(path: str) -> str:
    """'N bytes free on that filesystem; ' for the nearest existing folder above `path`, or ''."""
    import shutil

    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{shutil.disk_usage(folder).free} bytes free on that filesystem; "
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "assignments"):
            args.overrides = parse_set(args.assignments)
        args.fn(args)
    except CodepmpError as exc:
        print(f"codepmp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # a stage already printed its one-line error
        return int(exc.code or 0)
    except OSError as exc:
        from codepmp.atomic import is_disk_full

        if not is_disk_full(exc):
            raise
        # One line naming where it failed, not a traceback: atomic writes left no half-written file behind.
        where = exc.filename or "a local file"
        print(f"codepmp {args.command}: error: disk full: could not write {where}: {exc.strerror or exc}; "
              f"{_free_space(where)}free space there and rerun (finished work is kept and resumed)", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        # kfp.local reports a failed task as RuntimeError; the task's own error line is printed above it.
        print(f"codepmp {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
