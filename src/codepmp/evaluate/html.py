"""One self-contained HTML page comparing a PMP reward model with its control: tables with bootstrap intervals and
figures embedded as base64 PNG, so the page can be mailed, attached to an MLflow run or opened offline.

The `results` dict (plain JSON; every section but "domains" is optional, and a domain may lack any part):

    {
      "meta": {"title": str, <label>: str | number, ...,          # shown as a header; "title" names the page
               "plumbing_check"?: str},                           # present when the data is a plumbing check:
                                                                  # shown as a warning line above everything
      "domains": {
        <domain, e.g. "gsm8k", "logiqa2" or "all">: {
          "metrics": {                                            # one table row per metric
            <metric, e.g. "pairwise_accuracy" or "option_accuracy">: {
              "items": int, "clusters"?: int, "level": 0.95,
              "strata"?: [domain, ...],                           # "all": the mean over these, each weighing 1/k
              "plumbing_check"?: true,                            # values on corrupted data (see meta)
              "models": {<model, e.g. "pmp">: {"mean": f, "low": f, "high": f}, <"control">: {...}},
              "difference": {"a": "pmp", "b": "control", "mean": f, "low": f, "high": f},  # paired bootstrap
            },
          },
          "best_of_n": {
            "n": [1, 2, 4, ...], "problems": int, "trials": int, "level": 0.95, "plumbing_check"?: true,
            "curves": {<label, e.g. "pmp-rm", "control-rm", "majority", "random", "oracle">:
                       {"mean": [f per n], "low": [...], "high": [...]}},  # low/high present -> a CI band
            "difference"?: {"a": "pmp", "b": "control", "mean": [f per n], "low": [...], "high": [...]},
                                                                  # rm strategy, paired over problems
          },
        },
      },
      "sample_efficiency": [{"pairs": int, <model>: accuracy or {"mean", "low", "high", "over_seeds"?}, ...,
                             "difference"?: {"a", "b", "mean", "low", "high", "over_seeds"?}}, ...],
                             # over_seeds: {"seeds", "values", "mean", "min", "max", "std"?} (evaluate/sweep.py)
      "loss_curves": {<run label>: [[step, loss], ...]},
    }

`codepmp.evaluate.report_schema` declares this structure (pydantic models); `check_results` validates against it.
`metric_entry`, `best_of_n_entry` and `build_results` make these parts from per-item values and from
`codepmp.evaluate.metrics.best_of_n_compare` output. The page is a Jinja template (templates/report.html.j2) with
autoescape on, so text from the data is escaped wherever it is written. Figures are drawn on matplotlib's Agg
canvas directly (no pyplot), so rendering needs no display and leaves the process's matplotlib backend alone.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Sequence

import jinja2
from pydantic import ValidationError

from codepmp.atomic import atomic_path
from codepmp.evaluate.metrics import bootstrap_ci, cluster_layout, paired_difference_ci
from codepmp.evaluate.report_schema import DEFAULT_TITLE, Results, first_problem

BASELINES = ("majority", "random", "oracle")
COLORS = {"majority": "#2ca02c", "random": "#7f7f7f", "oracle": "#000000"}
MODEL_COLORS = ("#1f77b4", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
TEMPLATE = "report.html.j2"


def metric_entry(per_item: dict[str, list[float]], n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                 clusters: Sequence[Hashable] | None = None, strata: Sequence[Hashable] | None = None) -> dict:
    """A metric's table entry from per-item values (1/0 correctness) per model: each model's estimate with its
    cluster-bootstrap interval and, for two or more models, the paired difference first minus second.

    `clusters` labels the items that belong together (a math problem's pairs, a logic item's pairs) and are
    resampled together; `strata` the domains of a pooled metric, whose estimate is then the mean over domains of
    each domain's mean (`codepmp.evaluate.metrics.bootstrap_ci`)."""
    if not per_item:
        raise ValueError("a metric entry needs at least one model's per-item values")
    sizes = {len(v) for v in per_item.values()}
    if len(sizes) != 1:
        raise ValueError(f"every model must be scored on the same items; item counts: {sorted(sizes)}")
    items = sizes.pop()
    row_cluster, groups = cluster_layout(items, clusters, strata)
    entry: dict[str, Any] = {"items": items, "clusters": int(row_cluster.max()) + 1 if items else 0,
                             "level": level, "models": {}}
    if strata is not None:
        entry["strata"] = list(dict.fromkeys(strata))
    for name, values in per_item.items():
        mean, low, high = bootstrap_ci(values, n_resamples, seed, level, clusters, strata)
        entry["models"][name] = {"mean": mean, "low": low, "high": high}
    if len(per_item) >= 2:
        (a, a_values), (b, b_values) = list(per_item.items())[:2]
        mean, low, high = paired_difference_ci(a_values, b_values, n_resamples, seed, level, clusters, strata)
        entry["difference"] = {"a": a, "b": b, "mean": mean, "low": low, "high": high}
    return entry


def best_of_n_entry(curves_by_model: dict[str, dict], difference: dict | None = None) -> dict:
    """A domain's best-of-N part from `best_of_n_curves` output per model (or `best_of_n_compare(...)["curves"]`):
    an "<model>-rm" curve with its band per model, and the majority, random and oracle curves, which read no
    score and so are the same for every model (taken from the first). `difference` is `best_of_n_compare`'s
    paired rm difference, shown as a table row."""
    if not curves_by_model:
        raise ValueError("best-of-N needs at least one model's curves")
    first = next(iter(curves_by_model.values()))
    for name, result in curves_by_model.items():
        if result["n"] != first["n"] or result["problems"] != first["problems"]:
            raise ValueError(f"model {name!r} was drawn over other N or problems than the first model")
    curves = {f"{name}-rm": dict(result["strategies"]["rm"]) for name, result in curves_by_model.items()}
    for baseline in BASELINES:
        curves[baseline] = {"mean": list(first["strategies"][baseline]["mean"])}
    entry = {"n": list(first["n"]), "problems": first["problems"], "trials": first["trials"],
             "level": first.get("level", 0.95), "curves": curves}
    if difference:
        entry["difference"] = {k: (list(v) if isinstance(v, list) else v) for k, v in difference.items()}
    return entry


def build_results(domains: dict[str, dict], sample_efficiency: list[dict] | None = None,
                  loss_curves: dict[str, list] | None = None, meta: dict | None = None) -> dict:
    """The `results` dict from its parts, leaving out absent sections, checked against the schema."""
    results: dict[str, Any] = {"meta": dict(meta or {}), "domains": domains}
    if sample_efficiency:
        results["sample_efficiency"] = [dict(row) for row in sample_efficiency]
    if loss_curves:
        results["loss_curves"] = {label: [[float(s), float(v)] for s, v in points]
                                  for label, points in loss_curves.items()}
    check_results(results)
    return results


def check_results(results: dict) -> None:
    """Raise ValueError naming the first part of `results` that does not follow the module's schema
    (`codepmp.evaluate.report_schema.Results`), with its path (`results['domains']['gsm8k']...: needs mean, low
    and high`), so a malformed input fails before any file is written rather than deep in the rendering."""
    try:
        Results.model_validate(results)
    except ValidationError as error:
        raise ValueError(first_problem(error, results)) from None


def _plot_text(text: Any) -> str:
    """Data text as matplotlib shows it literally: an unpaired '$' would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def _num(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _interval(entry: dict | None, signed: bool = False) -> str:
    if not entry:
        return "—"
    sign = "+" if signed else ""
    return f"{entry['mean']:{sign}.3f} [{entry['low']:{sign}.3f}, {entry['high']:{sign}.3f}]"


def _excludes_zero(entry: dict) -> bool:
    return entry["low"] > 0 or entry["high"] < 0


def _item_count(entry: dict) -> str:
    items, clusters = entry.get("items", "—"), entry.get("clusters")
    return f"{items} ({clusters} clusters)" if clusters and clusters != items else f"{items}"


def _percent(level: float) -> int:
    return round(100 * level)


def _metric_label(metric: str, entry: dict) -> str:
    """The metric's name, and for a pooled metric the domains it averages."""
    name = metric.replace("_", " ")
    strata = [str(stratum) for stratum in entry.get("strata") or []]
    if len(strata) > 1:
        return f"{name} (mean of {len(strata)} domains: {', '.join(strata)})"
    return f"{name} ({strata[0]} only)" if strata else name


def _curve_cells(curve: dict) -> list[str]:
    """A best-of-N curve's cells by N: the interval where the curve carries one, else the mean."""
    if "low" in curve and "high" in curve:
        return [_interval({"mean": m, "low": lo, "high": hi})
                for m, lo, hi in zip(curve["mean"], curve["low"], curve["high"])]
    return [_num(value) for value in curve["mean"]]


def _points(difference: dict) -> list[dict]:
    """A per-N difference ({"mean": [...], "low": [...], "high": [...]}) as one interval per N."""
    return [dict(zip(("mean", "low", "high"), point))
            for point in zip(difference["mean"], difference["low"], difference["high"])]


def _accuracy(value: Any) -> str:
    """A sweep cell: an entry with its interval, or a bare accuracy."""
    return _interval(value) if isinstance(value, dict) else _num(value)


def _mean_difference(row: dict, a: str, b: str) -> str:
    """Model a minus model b in a sweep row that carries no difference entry of its own."""
    mean_a, mean_b = _mean(row.get(a)), _mean(row.get(b))
    return "—" if mean_a is None or mean_b is None else f"{mean_a - mean_b:+.3f}"


def _spread(entry: Any, signed: bool = False) -> str:
    """Spread over seeds: "mean [min, max]", with the sample sd when there are two or more seeds."""
    spread = entry.get("over_seeds") if isinstance(entry, dict) else None
    if not spread:
        return "—"
    sign = "+" if signed else ""
    text = f"{spread['mean']:{sign}.3f} [{spread['min']:{sign}.3f}, {spread['max']:{sign}.3f}]"
    return text + (f" sd {spread['std']:.3f}" if spread.get("std") is not None else "")


@dataclass(frozen=True)
class _SweepTable:
    """What the sample-efficiency table shows: rows by size, the models (compared pair first) and, with two or
    more seeds, the spread columns of the pair and its difference."""

    rows: list[dict]
    models: list[str]
    seeds: int
    spread_models: list[str]
    spread_labels: list[str]
    note: str


def _sweep_table(rows: list[dict]) -> _SweepTable:
    rows = sorted(rows, key=lambda r: r["pairs"])
    models = _se_models(rows)
    seeds = _seed_count(rows)
    # With one seed the spread is that seed's value again: the columns appear only when there is a spread to show.
    spread_models = models[:2] if seeds >= 2 else []
    spread_labels = [*spread_models, *([f"{models[0]} − {models[1]}"] if spread_models and len(models) >= 2 else [])]
    if seeds >= 2:
        note = (f"Accuracies are means over {seeds} finetuning seeds; intervals: 95% bootstrap over dev pairs "
                "(paired for the difference); the spread over seeds shows how much a result moves with the seed "
                "alone.")
    elif seeds:
        note = ("Intervals: 95% bootstrap over dev pairs (paired for the difference), from one finetuning seed "
                "per size: they do not cover the training's randomness (`sweep.seeds`).")
    else:
        note = ""
    return _SweepTable(rows, models, seeds, spread_models, spread_labels, note)


@functools.cache
def _environment() -> jinja2.Environment:
    """The templates next to this module, escaping every value written into the page."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("codepmp.evaluate", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters.update(interval=_interval, num=_num, item_count=_item_count, percent=_percent,
                               metric_label=_metric_label, curve_cells=_curve_cells, points=_points,
                               accuracy=_accuracy, mean_difference=_mean_difference, spread=_spread)
    environment.tests["excludes_zero"] = _excludes_zero
    return environment


def _new_figure(panels: int, height: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(4.2 * panels, 13.0), height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _curve_color(label: str, index: int) -> str:
    return COLORS.get(label, MODEL_COLORS[index % len(MODEL_COLORS)])


def _log2_axis(ax, values: list) -> None:
    """A log2 x axis ticked at the data's own values, written as plain numbers (64, not 2^6)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = sorted(set(values))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}" for t in ticks])


def _bon_figure(parts: dict[str, dict]):
    """Accuracy against N on a log2 axis, one panel per domain's best-of-N part; bands where a curve carries an
    interval."""
    fig, axes = _new_figure(len(parts))
    for ax, (domain, bon) in zip(axes, parts.items()):
        model_index = 0
        for label, curve in bon["curves"].items():
            is_baseline = label in COLORS
            color = _curve_color(label, model_index)
            model_index += not is_baseline
            ax.plot(bon["n"], curve["mean"], marker="o", markersize=3, color=color, label=_plot_text(label),
                    linestyle="--" if label == "oracle" else ":" if label == "random" else "-")
            if "low" in curve and "high" in curve:
                ax.fill_between(bon["n"], curve["low"], curve["high"], color=color, alpha=0.18, linewidth=0)
        _log2_axis(ax, bon["n"])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("N (candidates per problem)")
        ax.set_ylabel("accuracy")
        ax.set_title(_plot_text(f"{domain}: best-of-N ({bon.get('problems', '?')} problems)"), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return fig


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _mean(value) -> float | None:
    return value.get("mean") if isinstance(value, dict) else value


def _se_models(rows: list[dict]) -> list[str]:
    """Models of the sweep rows, the compared pair first (JSON round trips sort the keys), so each model keeps
    its colour from the best-of-N figure and the difference column reads first minus second."""
    models = [k for k in rows[0] if k not in ("pairs", "difference")]
    first = [m for m in (rows[0].get("difference") or {}).values() if m in models][:2]
    return first + [m for m in models if m not in first]


def _sample_efficiency_figure(rows: list[dict]):
    rows = sorted(rows, key=lambda r: r["pairs"])
    fig, (ax,) = _new_figure(1)
    for index, model in enumerate(_se_models(rows)):
        points = [(r["pairs"], r[model]) for r in rows if _mean(r.get(model)) is not None]
        color = _curve_color(model, index)
        ax.plot([p for p, _ in points], [_mean(v) for _, v in points], marker="o", color=color,
                label=_plot_text(model))
        if points and all(isinstance(v, dict) and "low" in v for _, v in points):
            ax.fill_between([p for p, _ in points], [v["low"] for _, v in points], [v["high"] for _, v in points],
                            color=color, alpha=0.15, linewidth=0)
        # Each seed's own accuracy as a small dot, so a mean carried by one lucky seed is visible.
        spreads = [(p, v["over_seeds"]["values"]) for p, v in points if isinstance(v, dict) and "over_seeds" in v]
        per_seed = [(p, value) for p, values in spreads if len(values) >= 2 for value in values]
        if per_seed:
            ax.scatter([p for p, _ in per_seed], [v for _, v in per_seed], s=9, color=color, alpha=0.5, linewidths=0)
    _log2_axis(ax, [r["pairs"] for r in rows])
    _label(ax, "finetuning pairs", "dev pairwise accuracy", "sample efficiency")
    return fig


def _seed_count(rows: list[dict]) -> int:
    """The most finetuning seeds behind any sweep entry; 0 for rows that record no seeds."""
    return max((len(entry["over_seeds"]["seeds"]) for row in rows for entry in row.values()
                if isinstance(entry, dict) and "over_seeds" in entry), default=0)


def _loss_figure(curves: dict[str, list]):
    fig, (ax,) = _new_figure(1)
    for index, (label, points) in enumerate(curves.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], color=MODEL_COLORS[index % len(MODEL_COLORS)],
                linewidth=1.2, label=_plot_text(label))
    _label(ax, "step", "loss", "training loss")
    return fig


def render_report(results: dict, out_html: str | Path, figures_dir: str | Path | None = None) -> list[Path]:
    """Write the report page to `out_html` and return the PNG figures written to `figures_dir` (none without
    one), so the same images can be logged to MLflow beside the page."""
    check_results(results)
    meta = results.get("meta") or {}
    domains = results.get("domains") or {}
    bon_parts = {name: part["best_of_n"] for name, part in domains.items()
                 if (part.get("best_of_n") or {}).get("n")}
    sample, losses = results.get("sample_efficiency"), results.get("loss_curves")
    figures: dict[str, bytes] = {}
    if bon_parts:
        figures["best_of_n.png"] = _png(_bon_figure(bon_parts))
    if sample:
        figures["sample_efficiency.png"] = _png(_sample_efficiency_figure(sample))
    if losses:
        figures["loss_curves.png"] = _png(_loss_figure(losses))

    page = _environment().get_template(TEMPLATE).render(
        title=meta.get("title", DEFAULT_TITLE), warning=meta.get("plumbing_check"),
        meta_items=[(k, v) for k, v in meta.items() if k not in ("title", "plumbing_check")],
        domains=domains, bon_parts=bon_parts, sweep=_sweep_table(sample) if sample else None,
        images={name: base64.b64encode(png).decode("ascii") for name, png in figures.items()})
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    written = []
    if figures_dir is not None:
        folder = Path(figures_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, png in figures.items():
            (folder / name).write_bytes(png)
            written.append(folder / name)
    return written
