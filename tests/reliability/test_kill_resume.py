"""Process kills: a stage's process group gets SIGKILL at a random point, then the same command is rerun.

For each of crawl, synthesize and pretrain: one clean reference run of the CLI command (`codepmp crawl |
synthesize | pretrain` on local folders, against a private stack of this module), then for seeds 0..N-1 the
same command in a fresh output folder (a fresh run name for pretrain, whose resumable checkpoints live in the
object store under it), killed mid-work, then rerun to completion. Most of a tiny run's wall time is start-up
(imports, model loading), so a kill timed from process start mostly lands before anything is written and
tests nothing; the kill is timed from the stage's own progress instead: the test polls what the stage has
persisted (crawl: output files; synthesize: row-cache files; pretrain: checkpoint objects), and once it
reaches k of the reference run's n units (k drawn from the seed in 1..n-1) waits a seeded fraction of the
reference's mean time per unit, so the kill lands while the next unit is being made or written. `detail`
says whether the kill landed and how much progress there was. The rerun
must exit 0 with outputs equal to the reference: the same rows in the same order (rows lost = reference rows
missing; a duplicated row fails on its own), and for pretrain bit-identical model files (CPU training here is
deterministic once resumed from a checkpoint that holds the optimizer, scheduler and RNG state).

    CODEPMP_FAULTS=1 CODEPMP_KILLS=10 .venv/bin/python -m pytest -q tests/reliability/test_kill_resume.py

CODEPMP_KILLS (default 10) is the number of seeds per stage: each costs two CLI runs of a few seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from codepmp.testing import TINY_PAIR_MAX_LENGTH as TINY_PAIR_TOKENS

KILLS = int(os.environ.get("CODEPMP_KILLS", "10"))
EXPERIMENT = "codepmp-kill-resume"
CORPUS_FILES = 12
PAIRS = 16
"""8 optimizer steps at the tiny profile's batch of 2, with a checkpoint after each: kills land between them."""
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def kill_stack(tmp_path_factory: pytest.TempPathFactory, private_stack) -> Iterator[dict[str, str]]:
    """A private stack for this module, its client variables in os.environ (stores opened here read them)."""
    with private_stack(tmp_path_factory.mktemp("kill-stack"), "kills") as stack:
        yield stack.client_env()


def write_corpus(folder: Path, files: int = CORPUS_FILES) -> Path:
    """Distinct Python files a little over the crawl's 200-byte minimum, so none is a near duplicate."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for i in range(files):
        names = [f"{rng.choice('abcdefgh')}{rng.randrange(10_000)}" for _ in range(12)]
        body = "\n".join(f"    {name} = {name[0]}_{j} * {rng.randrange(1000)} + {i}  # step {name}"
                         for j, name in enumerate(names))
        (folder / f"module_{i:02d}.py").write_text(f'"""Module {i}."""\n\n\ndef compute_{i}(x):\n{body}\n'
                                                   f"    return x\n")
    return folder


@pytest.fixture(scope="module")
def kill_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from codepmp.testing import write_tiny_model

    root = tmp_path_factory.mktemp("kill-inputs")
    rows = [{"description": f"Return {i} plus one.", "chosen": f"def f():\n    return {i} + 1\n",
             "rejected": f"def f():\n    return {i}\n"} for i in range(PAIRS)]
    (root / "pairs").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "pairs" / "pairs.parquet")
    # Two random inits: greedy chosen and rejected differ, as with a real strong and weak model.
    return {"corpus": write_corpus(root / "corpus"), "lm": write_tiny_model(root / "lm"),
            "weak": write_tiny_model(root / "weak", seed=1), "base": write_tiny_model(root / "base"),
            "pairs": root / "pairs"}


def crawl_command(corpus: Path, out: Path, run_name: str) -> list[str]:
    # Small chunks (about two files each): a kill lands between chunk markers, not only before the first.
    return _cli("crawl", "--out", str(out), "--run-name", run_name, "--set", f"crawl.sources={json.dumps([str(corpus)])}",
                "--set", "crawl.shard_bytes=1200", "--set", "crawl.decontam.enabled=false")


def synthesize_command(inputs: dict[str, Path], crawl_dir: Path, out: Path, run_name: str) -> list[str]:
    lm, weak = str(inputs["lm"]), str(inputs["weak"])
    # One file per chunk: each (role, chunk) generation is cached on its own, so a kill can land between them.
    return _cli("synthesize", "--crawl", str(crawl_dir), "--out", str(out), "--run-name", run_name,
                "--set", f"synthesize.summarizer_model={lm}", "--set", f"synthesize.strong_model={lm}",
                "--set", f"synthesize.weak_model={weak}", "--set", "synthesize.chunk_rows=1",
                "--set", "synthesize.max_pairs=4", "--set", "synthesize.description_tokens=8",
                "--set", "synthesize.code_tokens=8", "--set", "synthesize.temperature=0.7")


def pretrain_command(inputs: dict[str, Path], out: Path, run_name: str) -> list[str]:
    return _cli("pretrain", "--base", str(inputs["base"]), "--pairs", str(inputs["pairs"]), "--out", str(out),
                "--run-name", run_name, "--set", "pretrain.checkpoint_every=1", "--set", "pretrain.seed=3",
                "--set", f"pretrain.max_length={TINY_PAIR_TOKENS}")


def _cli(stage: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "codepmp.cli", stage, "--profile", "tiny", "--set", f"experiment={EXPERIMENT}",
            *args]


def run_to_end(command: list[str], log: Path) -> tuple[int, float, str]:
    """(exit code, wall seconds, stderr) of one run; output goes to `log` for a failing test to show."""
    run = watch(command, lambda: 0, log)
    return run["code"], run["seconds"], run["stderr"]


POLL_S = 0.05


def watch(command: list[str], progress, log: Path) -> dict:
    """Run `command` to the end while polling `progress()` (units persisted so far): exit code, wall seconds,
    stderr, and the times (from start) at which the count first reached 1, 2, ... n."""
    started = time.monotonic()
    reached: list[float] = []
    errors = log.with_suffix(".stderr")
    with log.open("ab") as out, errors.open("wb") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)
        while proc.poll() is None and time.monotonic() - started < RUN_TIMEOUT_S:
            reached += [time.monotonic() - started] * max(0, progress() - len(reached))
            time.sleep(POLL_S)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stderr = errors.read_text(errors="replace")
    with log.open("a") as out:
        out.write(stderr)
    return {"code": proc.returncode, "seconds": time.monotonic() - started, "stderr": stderr, "reached": reached}


def kill_point(seed: int, reached: list[float]) -> tuple[int, float]:
    """(units to wait for, then seconds more): k in 1..n-1 and 0-80 % of the mean time per unit."""
    rng = random.Random(seed)
    units = len(reached)
    target = rng.randint(1, max(1, units - 1))
    per_unit = (reached[-1] - reached[0]) / (units - 1) if units > 1 else 0.5
    return target, rng.uniform(0.0, 0.8) * per_unit  # below one unit: the run is still going


def kill_at_progress(command: list[str], progress, target: int, extra_s: float, log: Path) -> dict:
    """Start `command` in its own process group, wait until `progress()` reaches `target`, `extra_s` more, then
    SIGKILL the whole group; killed is False when the run ended first."""
    started = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)
        while proc.poll() is None and progress() < target and time.monotonic() - started < RUN_TIMEOUT_S:
            time.sleep(POLL_S)
        try:
            proc.wait(timeout=extra_s)
            return {"killed": False, "at_s": time.monotonic() - started, "progress": progress()}
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group: no child (a loader, a tokenizer pool) survives
            proc.wait()
            return {"killed": True, "at_s": time.monotonic() - started, "progress": progress()}


def files(folder: Path) -> dict[str, bytes]:
    """Every visible file under `folder` (the hidden temp names of atomic writes are listed by `temp_files`)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def temp_files(folder: Path) -> list[str]:
    """Files left under hidden temp names (or inside a hidden temp folder) by an interrupted atomic write."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and any(part.startswith(".") for part in p.relative_to(folder).parts))


def row_loss(reference: list[str], actual: list[str]) -> tuple[int, int]:
    """(reference rows missing, duplicated rows) of two lists of row ids."""
    missing = Counter(reference) - Counter(actual)
    return sum(missing.values()), len(actual) - len(set(actual))


def crawl_ids(out: Path) -> list[str]:
    """Row ids of every shard the manifest lists, in order: read raw (`read_shards` would hide a duplicate)."""
    import pyarrow.parquet as pq

    manifest = json.loads((out / "manifest.json").read_text())
    return [i for shard in manifest["shards"] for i in pq.read_table(out / shard["name"], columns=["id"])
            .column("id").to_pylist()]


def pairs_rows(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(out / "pairs.parquet").to_pylist()


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _kill_and_resume(command_for, progress_for, reference: dict, seed: int, tmp: Path) -> dict:
    """Kill a run of `command_for(out, run_name)` at the seed's point of progress (`progress_for(out,
    run_name)` counts units), rerun it; what happened."""
    out, run_name, log = tmp / f"kill-{seed}", f"kill-{seed}", tmp / f"kill-{seed}.log"
    command = command_for(out, run_name)
    target, extra_s = kill_point(seed, reference["reached"])
    kill = kill_at_progress(command, lambda: progress_for(out, run_name), target, extra_s, log)
    code, rerun_s, stderr = run_to_end(command, log)
    units = len(reference["reached"])
    where = (f"killed={kill['killed']} at {kill['at_s']:.1f}s of a {reference['seconds']:.1f}s run, "
             f"{kill['progress']} of {units} units persisted (aimed at {target} + {extra_s:.2f}s)")
    return {"seed": seed, "out": out, "run_name": run_name, "killed": kill["killed"], "where": where,
            "code": code, "rerun_s": rerun_s, "log": log, "stderr": stderr}


def reference_run(command: list[str], progress, out: Path) -> dict:
    """The uninterrupted run the kills are compared with, watched for when each unit of progress appears."""
    run = watch(command, progress, out.parent / "run.log")
    assert run["code"] == 0, run["stderr"][-3000:]
    return {"out": out, **run}


def assert_killed_then_completed(run: dict) -> None:
    assert run["killed"], f"the kill did not land, so no fault was injected: {run['where']}"
    assert run["code"] == 0, _log_tail(run["log"])


def file_count(folder: Path) -> int:
    return len(files(folder)) if folder.exists() else 0


# --- the three stages --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crawl_reference(kill_stack, kill_inputs, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("crawl-ref") / "out"
    return reference_run(crawl_command(kill_inputs["corpus"], out, "crawl-ref"), lambda: file_count(out), out)


@pytest.mark.faults
@pytest.mark.parametrize("seed", range(KILLS))
def test_crawl_killed_then_rerun(kill_stack, kill_inputs, crawl_reference, seed, tmp_path, record) -> None:
    ref = crawl_reference["out"]
    run = _kill_and_resume(lambda out, name: crawl_command(kill_inputs["corpus"], out, name),
                           lambda out, name: file_count(out), crawl_reference, seed, tmp_path)
    ok_exit = run["code"] == 0
    lost, duplicates = row_loss(crawl_ids(ref), crawl_ids(run["out"]) if ok_exit else [])
    differing = sorted(n for n in files(ref).keys() | files(run["out"]).keys()
                       if files(ref).get(n) != files(run["out"]).get(n)) if ok_exit else ["<no output>"]
    leftovers = temp_files(run["out"]) if run["out"].exists() else []
    ok = run["killed"] and ok_exit and lost == 0 and duplicates == 0 and not differing and not leftovers
    record("fault", f"SIGKILL mid-stage, then rerun (crawl, tiny, seed {seed})", ok, rows_lost=lost,
           detail=f"{run['where']} (output files); rerun exit {run['code']} in {run['rerun_s']:.1f}s; "
                  f"duplicates={duplicates}; differing files={differing}; temp files left={leftovers}")

    assert_killed_then_completed(run)
    assert lost == 0 and duplicates == 0, (lost, duplicates)
    assert differing == []
    assert leftovers == []


@pytest.fixture(scope="module")
def synthesize_reference(kill_stack, kill_inputs, crawl_reference, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("synth-ref") / "out"
    return reference_run(synthesize_command(kill_inputs, crawl_reference["out"], out, "synth-ref"),
                         lambda: file_count(out / "cache"), out)


@pytest.mark.faults
@pytest.mark.parametrize("seed", range(KILLS))
def test_synthesize_killed_then_rerun(kill_stack, kill_inputs, crawl_reference, synthesize_reference, seed,
                                      tmp_path, record) -> None:
    ref = synthesize_reference["out"]
    run = _kill_and_resume(lambda out, name: synthesize_command(kill_inputs, crawl_reference["out"], out, name),
                           lambda out, name: file_count(out / "cache"), synthesize_reference, seed, tmp_path)
    ok_exit = run["code"] == 0
    expected, actual = pairs_rows(ref), pairs_rows(run["out"]) if ok_exit else []
    lost, duplicates = row_loss([r["id"] for r in expected], [r["id"] for r in actual])
    same_rows = actual == expected  # every column, in order
    counts = {k: json.loads((ref / "stats.json").read_text())[k] for k in ("pairs", "files", "dropped")}
    got = {k: json.loads((run["out"] / "stats.json").read_text())[k] for k in counts} if ok_exit else {}
    leftovers = temp_files(run["out"]) if run["out"].exists() else []
    ok = run["killed"] and ok_exit and lost == 0 and duplicates == 0 and same_rows and got == counts and not leftovers
    record("fault", f"SIGKILL mid-stage, then rerun (synthesize, tiny, seed {seed})", ok, rows_lost=lost,
           detail=f"{run['where']} (row-cache files); rerun exit {run['code']} in {run['rerun_s']:.1f}s; "
                  f"duplicates={duplicates}; rows equal={same_rows}; counts {got} vs {counts}; "
                  f"temp files left={leftovers}")

    assert_killed_then_completed(run)
    assert lost == 0 and duplicates == 0, (lost, duplicates)
    assert same_rows
    assert got == counts
    assert leftovers == []


@pytest.fixture(scope="module")
def pretrain_reference(kill_stack, kill_inputs, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pretrain-ref") / "out"
    return reference_run(pretrain_command(kill_inputs, out, "pretrain-ref"), lambda: checkpoint_objects("pretrain-ref"),
                         out)


def _checkpoint_keys(run_name: str) -> list[str]:
    from codepmp.storage import ObjectStore

    return ObjectStore.from_env()._list_all(f"runs/{run_name}/pretrain/")  # temporary keys included


def checkpoint_objects(run_name: str) -> int:
    """Checkpoint objects written so far (each checkpoint is several; temporary keys not counted)."""
    from codepmp.storage import is_temporary_key

    return sum(1 for key in _checkpoint_keys(run_name) if not is_temporary_key(key))


@pytest.mark.faults
@pytest.mark.parametrize("seed", range(KILLS))
def test_pretrain_killed_then_rerun(kill_stack, kill_inputs, pretrain_reference, seed, tmp_path, record) -> None:
    from codepmp.storage import is_temporary_key

    ref = pretrain_reference["out"]
    run = _kill_and_resume(lambda out, name: pretrain_command(kill_inputs, out, name),
                           lambda out, name: checkpoint_objects(name), pretrain_reference, seed, tmp_path)
    ok_exit = run["code"] == 0
    resumed = "resumed from checkpoint" in run["log"].read_text(errors="replace")
    expected, actual = files(ref), files(run["out"]) if ok_exit else {}
    differing = sorted(n for n in expected.keys() | actual.keys() if expected.get(n) != actual.get(n))
    lost = sum(1 for n in expected if n not in actual)
    leftovers = [k for k in _checkpoint_keys(run["run_name"]) if is_temporary_key(k)]
    local_leftovers = temp_files(run["out"].parent) if run["out"].parent.exists() else []
    ok = run["killed"] and ok_exit and not differing and not leftovers and not local_leftovers
    record("fault", f"SIGKILL mid-stage, then rerun (pretrain, tiny, seed {seed})", ok, rows_lost=lost,
           detail=f"{run['where']} (checkpoint objects); resumed from a checkpoint={resumed}; rerun exit {run['code']} in {run['rerun_s']:.1f}s; "
                  f"differing model files={differing} (bitwise comparison); temporary keys left={leftovers}; "
                  f"local temp files left={local_leftovers}")

    assert_killed_then_completed(run)
    assert differing == [], "the resumed model differs from the uninterrupted one"
    assert leftovers == [] and local_leftovers == []


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path) -> None:
    """SIGKILL runs no cleanup: the next atomic write of the same file removes the dead writer's temp file."""
    from codepmp.atomic import write_json

    target = tmp_path / "stats.json"
    script = ("import sys, time\nfrom codepmp.atomic import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_text('half')\n    print('ready', flush=True)\n"
              "    time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE)
    assert writer.stdout.readline().strip() == b"ready"
    writer.kill()
    writer.wait()
    assert temp_files(tmp_path) == [f".stats.json.tmp-{writer.pid}"]  # what the kill left
    write_json({"rows": 1}, target)
    assert temp_files(tmp_path) == [] and json.loads(target.read_text()) == {"rows": 1}
