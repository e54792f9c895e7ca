"""The sample-efficiency table: dev pairwise accuracy by finetuning pairs, PMP against control, over seeds.

Each sweep task (one size, one seed, one variant) writes a result JSON with its per-dev-pair 1/0 outcomes
(`dev_correct`). For every size, `sweep_table` gives each variant and the PMP - control difference:

- "mean", "low", "high": the accuracy averaged over seeds and its bootstrap 95 % interval (each pair's outcome
  averaged over the seeds first; paired for the difference). When the results carry `dev_clusters` and
  `dev_domains` (sweep tasks write them), the bootstrap resamples problems within domains and the mean is the
  mean over domains, as the evaluate stage's pooled metric; otherwise every pair is its own cluster. With one
  seed this is that seed's accuracy and interval. The interval covers the dev set's sampling, not the
  training's randomness;
- "over_seeds": one value per seed ("seeds", "values", in seed order) and their "mean", "min", "max" and, with two
  or more seeds, the sample standard deviation "std": how much the result moves when only the seed changes.
  For the difference the values are the per-seed paired differences (PMP and control of a seed share its subset).
"""

from __future__ import annotations

import random
import statistics
from typing import Any

from codepmp.config import EvaluateConfig
from codepmp.errors import ConfigError, InputError
from codepmp.evaluate.metrics import bootstrap_ci, paired_difference_ci

VARIANTS = ("pmp", "control")
_RESULT_KEYS = ("variant", "subset", "seed", "dev_correct")


def nested_subset(pairs: list, size: int, seed: int) -> list:
    """The first `size` pairs of one seeded shuffle: every smaller subset is part of every larger one."""
    if not 0 < size <= len(pairs):
        raise ConfigError(f"sweep size {size} must be between 1 and the {len(pairs)} training pairs")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    return [pairs[i] for i in order[:size]]


def score_sweep_point(cfg: EvaluateConfig, model_dir: str, data_dir: str) -> dict[str, Any]:
    """A sweep task's dev results: its model's 1/0 outcome on every dev pair, their accuracy, and each pair's
    problem and domain, so the table's intervals resample problems within domains as the evaluate stage's do."""
    from codepmp.evaluate.run import dev_clusters, dev_pairwise_correct
    from codepmp.pairs import read_reasoning_table

    dev = read_reasoning_table(data_dir, "dev")
    correct = dev_pairwise_correct(cfg, model_dir, dev)
    return {"dev_pairs": len(dev), "dev_pairwise_accuracy": sum(correct) / len(correct), "dev_correct": correct,
            "dev_clusters": dev_clusters(dev), "dev_domains": [r["domain"] for r in dev]}


def spread_over_seeds(values_by_seed: dict[int, float]) -> dict[str, Any]:
    """{"seeds", "values", "mean", "min", "max"} of one value per seed, plus "std" (n - 1) with two or more seeds."""
    if not values_by_seed:
        raise ValueError("a spread over seeds needs at least one seed")
    seeds = sorted(values_by_seed)
    values = [float(values_by_seed[s]) for s in seeds]
    spread = {"seeds": seeds, "values": values, "mean": statistics.fmean(values), "min": min(values),
              "max": max(values)}
    if len(values) >= 2:
        spread["std"] = statistics.stdev(values)
    return spread


def group_results(results: list[tuple[str, dict]]) -> dict[int, dict[int, dict[str, list[float]]]]:
    """{size: {seed: {variant: dev_correct}}} from (where, result) pairs; `where` names a result in errors.
    Every (size, seed) needs exactly one pmp and one control result over the same dev pairs."""
    table: dict[int, dict[int, dict[str, list[float]]]] = {}
    for where, result in results:
        missing = [k for k in _RESULT_KEYS if k not in result]
        if missing:
            raise InputError(f"{where}: a sweep result needs {missing} (rerun its finetune task)")
        variant, size, seed = result["variant"], int(result["subset"]), int(result["seed"])
        if variant not in VARIANTS:
            raise InputError(f"{where}: variant {variant!r} is neither of {list(VARIANTS)}")
        cell = table.setdefault(size, {}).setdefault(seed, {})
        if variant in cell:
            raise InputError(f"{where}: a second {variant} result for size {size}, seed {seed}")
        cell[variant] = [float(v) for v in result["dev_correct"]]
    incomplete = sorted((n, s) for n, by_seed in table.items() for s, cell in by_seed.items()
                        if set(cell) != set(VARIANTS))
    if incomplete:
        raise InputError("the sweep needs a pmp and a control result per size and seed; incomplete sizes: "
                         f"{sorted({n for n, _ in incomplete})} ((size, seed): {incomplete})")
    lengths = {len(v) for by_seed in table.values() for cell in by_seed.values() for v in cell.values()}
    if len(lengths) > 1:
        raise InputError(f"sweep results were scored on different dev sets: {sorted(lengths)} dev pairs")
    if 0 in lengths:
        raise InputError("sweep results hold no dev pairs: the reasoning data has an empty dev split")
    return table


def _seed_mean(per_seed: list[list[float]]) -> list[float]:
    """Each dev pair's outcome averaged over seeds."""
    return [statistics.fmean(outcomes) for outcomes in zip(*per_seed)]


def sweep_table(results: list[tuple[str, dict]], n_resamples: int, seed: int) -> list[dict]:
    """Rows by size (module docstring): {"pairs": n, "pmp": entry, "control": entry, "difference": entry}."""
    rows = []
    # Results written before the cluster columns existed get a row bootstrap (every pair its own cluster).
    design = next(({"clusters": r["dev_clusters"], "strata": r.get("dev_domains")} for _, r in results
                   if r.get("dev_clusters")), {})
    for size, by_seed in sorted(group_results(results).items()):
        seeds = sorted(by_seed)
        row: dict[str, Any] = {"pairs": size}
        for variant in VARIANTS:
            estimate = bootstrap_ci(_seed_mean([by_seed[s][variant] for s in seeds]), n_resamples, seed, **design)
            row[variant] = {**dict(zip(("mean", "low", "high"), estimate)), "over_seeds": spread_over_seeds(
                {s: statistics.fmean(by_seed[s][variant]) for s in seeds})}
        difference = paired_difference_ci(_seed_mean([by_seed[s]["pmp"] for s in seeds]),
                                          _seed_mean([by_seed[s]["control"] for s in seeds]), n_resamples, seed,
                                          **design)
        per_seed = {s: statistics.fmean(by_seed[s]["pmp"]) - statistics.fmean(by_seed[s]["control"]) for s in seeds}
        row["difference"] = {"a": "pmp", "b": "control", **dict(zip(("mean", "low", "high"), difference)),
                             "over_seeds": spread_over_seeds(per_seed)}
        rows.append(row)
    return rows


def seed_metrics(rows: list[dict]) -> dict[str, float]:
    """Flat metrics of the bootstrap estimates ("pmp.n8", "pmp.n8_ci_low", ...) and of the spread over seeds
    ("pmp_seeds.n8_min", "..._max", "..._std" with two or more seeds); "diff" is PMP - control."""
    metrics = {}
    for row in rows:
        n = row["pairs"]
        for key, entry in (("pmp", row["pmp"]), ("control", row["control"]), ("diff", row["difference"])):
            metrics.update({f"{key}.n{n}": entry["mean"], f"{key}.n{n}_ci_low": entry["low"],
                            f"{key}.n{n}_ci_high": entry["high"]})
            spread = entry["over_seeds"]
            metrics.update({f"{key}_seeds.n{n}_{stat}": spread[stat] for stat in ("min", "max", "std")
                            if stat in spread})
    return metrics


def _cell(entry: dict, sign: str = "") -> str:
    return f"{entry['mean']:{sign}.4f} [{entry['low']:{sign}.3f}, {entry['high']:{sign}.3f}]"


def seed_cell(spread: dict, sign: str = "") -> str:
    """ "mean [min, max]" over seeds, with "sd" when there are two or more."""
    text = f"{spread['mean']:{sign}.4f} [{spread['min']:{sign}.3f}, {spread['max']:{sign}.3f}]"
    return text + (f" sd {spread['std']:.3f}" if "std" in spread else "")


def sweep_markdown(rows: list[dict], dev_pairs: int) -> str:
    """The table as Markdown for the Kubeflow UI and MLflow; the spread columns appear with two or more seeds."""
    if not rows:
        return "# Sample efficiency\n\nNo sweep sizes were configured (`sweep.sizes`).\n"
    seed_counts = sorted({len(row["pmp"]["over_seeds"]["seeds"]) for row in rows})
    several = seed_counts[-1] >= 2
    counts = "/".join(str(c) for c in seed_counts)
    lines = ["# Sample efficiency: PMP vs control\n",
             f"Dev pairwise accuracy ({dev_pairs} pairs) after finetuning on nested subsets of the train pairs, "
             "with bootstrap 95 % intervals over dev pairs (paired for the difference)"
             + (f"; accuracies are means over {counts} seeds, whose spread (mean [min, max], sample sd) shows how "
                "much a result moves with the seed alone.\n" if several else
                ". One finetuning seed per size (`sweep.seeds`): the intervals do not cover the training's "
                "randomness.\n"),
             "| finetuning pairs | pmp | control | pmp - control |", "|---:|---:|---:|---:|"]
    if several:
        lines[-2] += f" pmp over {counts} seeds | control over {counts} seeds | pmp - control over {counts} seeds |"
        lines[-1] += "---:|---:|---:|"
    for row in rows:
        line = f"| {row['pairs']} | {_cell(row['pmp'])} | {_cell(row['control'])} | {_cell(row['difference'], '+')} |"
        if several:
            line += (f" {seed_cell(row['pmp']['over_seeds'])} | {seed_cell(row['control']['over_seeds'])} |"
                     f" {seed_cell(row['difference']['over_seeds'], '+')} |")
        lines.append(line)
    return "\n".join(lines) + "\n"
