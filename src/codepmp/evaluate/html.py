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

`metric_entry`, `best_of_n_entry` and `build_results` make these parts from per-item values and from
`codepmp.evaluate.metrics.best_of_n_compare` output. Figures are drawn on matplotlib's Agg canvas directly
(no pyplot), so rendering needs no display and leaves the process's matplotlib backend alone.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Hashable, Sequence

from codepmp.atomic import atomic_path
from codepmp.evaluate.metrics import bootstrap_ci, cluster_layout, paired_difference_ci

BASELINES = ("majority", "random", "oracle")
COLORS = {"majority": "#2ca02c", "random": "#7f7f7f", "oracle": "#000000"}
MODEL_COLORS = ("#1f77b4", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:70em;color:#222;
padding:0 1em;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0 1em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right;font-variant-numeric:tabular-nums}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}
td.sig{font-weight:600}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}dl.meta dt{color:#666}dl.meta dd{margin:0}
img{max-width:100%;height:auto}p.note{color:#666;font-size:.9em}
p.warn{background:#fff3cd;border:1px solid #d4a400;padding:.5em .8em;font-weight:600}
span.tag{color:#9a6700;font-size:.85em;font-weight:600}
"""
PLUMBING_TAG = " (plumbing check)"


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


def _require(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise ValueError(f"results{where}: {what}")


def _check_interval(value: Any, where: str) -> None:
    _require(isinstance(value, dict) and all(k in value for k in ("mean", "low", "high")), where,
             "needs mean, low and high")


def check_results(results: dict) -> None:
    """Raise ValueError naming the first part of `results` that does not follow the module's schema, so a
    malformed input fails before any file is written rather than as a KeyError deep in the rendering."""
    _require(isinstance(results, dict) and isinstance(results.get("domains", {}), dict), "",
             "must be a dict whose 'domains' is a dict")
    for domain, part in results.get("domains", {}).items():
        where = f"['domains'][{domain!r}]"
        _require(isinstance(part, dict), where, "must be a dict")
        for metric, entry in part.get("metrics", {}).items():
            at = f"{where}['metrics'][{metric!r}]"
            _require(isinstance(entry, dict) and isinstance(entry.get("models"), dict) and entry["models"], at,
                     "needs a non-empty 'models' dict")
            for model, value in entry["models"].items():
                _check_interval(value, f"{at}['models'][{model!r}]")
            if "difference" in entry:
                _check_interval(entry["difference"], f"{at}['difference']")
        if "best_of_n" in part:
            bon, at = part["best_of_n"], f"{where}['best_of_n']"
            _require(isinstance(bon, dict) and isinstance(bon.get("n"), list) and isinstance(bon.get("curves"), dict),
                     at, "needs an 'n' list and a 'curves' dict")
            for label, curve in bon["curves"].items():
                lengths = {len(curve.get(k, bon["n"])) for k in ("mean", "low", "high")}
                _require("mean" in curve and lengths == {len(bon["n"])}, f"{at}['curves'][{label!r}]",
                         "mean (and low/high, if given) must have one value per N")
            if "difference" in bon:
                diff = bon["difference"]
                _require(isinstance(diff, dict) and all(len(diff.get(k) or []) == len(bon["n"])
                                                        for k in ("mean", "low", "high")),
                         f"{at}['difference']", "needs mean, low and high with one value per N")
    for number, row in enumerate(results.get("sample_efficiency") or []):
        _require(isinstance(row, dict) and "pairs" in row, f"['sample_efficiency'][{number}]", "needs 'pairs'")
        for key, entry in row.items():
            if isinstance(entry, dict) and "over_seeds" in entry:
                spread, needed = entry["over_seeds"], ("seeds", "values", "mean", "min", "max")
                _require(isinstance(spread, dict) and all(k in spread for k in needed),
                         f"['sample_efficiency'][{number}][{key!r}]['over_seeds']", f"needs {', '.join(needed)}")
    for label, points in (results.get("loss_curves") or {}).items():
        _require(all(len(p) == 2 for p in points), f"['loss_curves'][{label!r}]", "needs [step, loss] points")


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _plot_text(text: Any) -> str:
    """Data text as matplotlib shows it literally: an unpaired '$' would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def _num(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _interval(entry: dict | None, signed: bool = False) -> str:
    if not entry:
        return "—"
    sign = "+" if signed else ""
    return f"{entry['mean']:{sign}.3f} [{entry['low']:{sign}.3f}, {entry['high']:{sign}.3f}]"


def _excludes_zero(entry: dict) -> bool:
    return entry["low"] > 0 or entry["high"] < 0


def _items(entry: dict) -> str:
    items, clusters = entry.get("items", "—"), entry.get("clusters")
    return f"{items} ({clusters} clusters)" if clusters and clusters != items else f"{items}"


def _tag(part: dict) -> str:
    return f'<span class="tag">{_esc(PLUMBING_TAG)}</span>' if part.get("plumbing_check") else ""


def _metric_table(metrics: dict[str, dict]) -> str:
    """Rows of metrics, one column per model and one for the paired difference."""
    first = next(iter(metrics.values()))
    models = list(first["models"])
    level = round(100 * first.get("level", 0.95))
    diff = first.get("difference")
    diff_label = f"{diff['a']} − {diff['b']} (paired)" if diff else "difference"
    head = "".join(f"<th>{_esc(m)} [{level}% CI]</th>" for m in models)
    rows = [f"<tr><th>metric</th><th>items</th>{head}<th>{_esc(diff_label)} [{level}% CI]</th></tr>"]
    for metric, entry in metrics.items():
        cells = "".join(f"<td>{_esc(_interval(entry['models'].get(m)))}</td>" for m in models)
        difference = entry.get("difference")
        mark = ' class="sig"' if difference and _excludes_zero(difference) else ""
        name = metric.replace("_", " ")
        strata = [str(stratum) for stratum in entry.get("strata") or []]
        if len(strata) > 1:
            name += f" (mean of {len(strata)} domains: {', '.join(strata)})"
        elif strata:
            name += f" ({strata[0]} only)"
        rows.append(f"<tr><td>{_esc(name)}{_tag(entry)}</td><td>{_esc(_items(entry))}</td>"
                    f"{cells}<td{mark}>{_esc(_interval(difference, signed=True))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _bon_table(bon: dict) -> str:
    """Strategies by N (reward models with their interval), and the paired rm difference where there is one."""
    head = "".join(f"<th>N={_esc(n)}</th>" for n in bon["n"])
    rows = [f"<tr><th>strategy</th>{head}</tr>"]
    for label, curve in bon["curves"].items():
        if "low" in curve and "high" in curve:
            cells = [_interval({"mean": m, "low": lo, "high": hi})
                     for m, lo, hi in zip(curve["mean"], curve["low"], curve["high"])]
        else:
            cells = [_num(v) for v in curve["mean"]]
        rows.append(f"<tr><td>{_esc(label)}</td>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    diff = bon.get("difference")
    if diff:
        cells = []
        for point in zip(diff["mean"], diff["low"], diff["high"]):
            entry = dict(zip(("mean", "low", "high"), point))
            mark = ' class="sig"' if _excludes_zero(entry) else ""
            cells.append(f"<td{mark}>{_esc(_interval(entry, signed=True))}</td>")
        rows.append(f"<tr><td>{_esc(diff.get('a', 'a'))} − {_esc(diff.get('b', 'b'))} rm (paired)</td>"
                    + "".join(cells) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


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


def _bon_figure(domains: dict[str, dict]):
    """Accuracy against N on a log2 axis, one panel per domain; bands where a curve carries an interval."""
    parts = {name: part["best_of_n"] for name, part in domains.items() if part.get("best_of_n", {}).get("n")}
    if not parts:
        return None
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


def _spread(entry: Any, signed: bool = False) -> str:
    """Spread over seeds: "mean [min, max]", with the sample sd when there are two or more seeds."""
    spread = entry.get("over_seeds") if isinstance(entry, dict) else None
    if not spread:
        return "—"
    sign = "+" if signed else ""
    text = f"{spread['mean']:{sign}.3f} [{spread['min']:{sign}.3f}, {spread['max']:{sign}.3f}]"
    return text + (f" sd {spread['std']:.3f}" if "std" in spread else "")


def _sample_efficiency_table(rows: list[dict]) -> str:
    rows = sorted(rows, key=lambda r: r["pairs"])
    models = _se_models(rows)
    diff = len(models) >= 2
    # With one seed the spread is that seed's value again: the columns appear only when there is a spread to show.
    seeds = _seed_count(rows)
    spread_models = models[:2] if seeds >= 2 else []
    head = "".join(f"<th>{_esc(m)}</th>" for m in models)
    diff_head = f"<th>{_esc(models[0])} − {_esc(models[1])}</th>" if diff else ""
    spread_labels = [*spread_models, *([f"{models[0]} − {models[1]}"] if spread_models and diff else [])]
    spread_head = "".join(f"<th>{_esc(label)}<br>over {seeds} seeds: mean [min, max]</th>" for label in spread_labels)
    out = [f"<tr><th>finetuning pairs</th>{head}{diff_head}{spread_head}</tr>"]
    for row in rows:
        cells = "".join(f"<td>{_interval(v) if isinstance(v := row.get(m), dict) else _num(v)}</td>" for m in models)
        if diff and isinstance(row.get("difference"), dict):
            cells += f'<td{" class=sig" if _excludes_zero(row["difference"]) else ""}>' \
                     f'{_interval(row["difference"], signed=True)}</td>'
        elif diff:
            a, b = _mean(row.get(models[0])), _mean(row.get(models[1]))
            cells += f"<td>{'—' if a is None or b is None else f'{a - b:+.3f}'}</td>"
        cells += "".join(f"<td>{_spread(row.get(m))}</td>" for m in spread_models)
        if spread_models and diff:
            cells += f"<td>{_spread(row.get('difference'), signed=True)}</td>"
        out.append(f"<tr><td>{_esc(row['pairs'])}</td>{cells}</tr>")
    if not seeds:
        return "<table>" + "".join(out) + "</table>"
    seeds_note = (f"Accuracies are means over {seeds} finetuning seeds; intervals: 95% bootstrap over dev pairs "
                  "(paired for the difference); the spread over seeds shows how much a result moves with the seed "
                  "alone." if seeds >= 2 else "Intervals: 95% bootstrap over dev pairs (paired for the difference), "
                  "from one finetuning seed per size: they do not cover the training's randomness (`sweep.seeds`).")
    return f'<p class="note">{_esc(seeds_note)}</p><table>' + "".join(out) + "</table>"


def _loss_figure(curves: dict[str, list]):
    fig, (ax,) = _new_figure(1)
    for index, (label, points) in enumerate(curves.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], color=MODEL_COLORS[index % len(MODEL_COLORS)],
                linewidth=1.2, label=_plot_text(label))
    _label(ax, "step", "loss", "training loss")
    return fig


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{_esc(alt)}" src="data:image/png;base64,{data}"></p>'


def _meta_block(meta: dict) -> str:
    items = [(k, v) for k, v in meta.items() if k not in ("title", "plumbing_check")]
    if not items:
        return ""
    return '<dl class="meta">' + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items) + "</dl>"


def render_report(results: dict, out_html: str | Path, figures_dir: str | Path | None = None) -> list[Path]:
    """Write the report page to `out_html` and return the PNG figures written to `figures_dir` (none without
    one), so the same images can be logged to MLflow beside the page."""
    check_results(results)
    meta = results.get("meta") or {}
    domains = results.get("domains") or {}
    title = meta.get("title", "codepmp evaluation: PMP vs control")
    figures: dict[str, bytes] = {}
    body = [f"<h1>{_esc(title)}</h1>"]
    if meta.get("plumbing_check"):
        body.append(f'<p class="warn" id="plumbing-check">{_esc(meta["plumbing_check"])}</p>')
    body.append(_meta_block(meta))

    body.append("<h2>PMP vs control</h2>")
    if not domains:
        body.append('<p class="note">No evaluation domains in these results.</p>')
    for domain, part in domains.items():
        body.append(f"<h3>{_esc(domain)}</h3>")
        if part.get("metrics"):
            body.append(_metric_table(part["metrics"]))
        else:
            body.append('<p class="note">No pairwise or option metrics for this domain.</p>')
    body.append('<p class="note">Intervals are percentile cluster bootstraps: each resample draws whole clusters '
                '(a math problem, a logic item: the pairs sharing a prompt) rather than rows; the difference '
                'resamples the same clusters for both models (paired). A pooled metric ("all") is the mean over '
                'its domains, each weighing the same, with clusters resampled within each domain (stratified). '
                'Bold: the interval excludes 0.</p>')

    bon_figure = _bon_figure(domains)
    if bon_figure is not None:
        figures["best_of_n.png"] = _png(bon_figure)
        body += ["<h2>Best-of-N</h2>", _img(figures["best_of_n.png"], "best-of-N accuracy against N")]
        for domain, part in domains.items():
            bon = part.get("best_of_n")
            if bon and bon.get("n"):
                body += [f"<h3>{_esc(domain)}{_tag(bon)}</h3>",
                         f'<p class="note">{_esc(bon.get("problems", "?"))} problems, {_esc(bon.get("trials", "?"))} '
                         f'seeded draws per problem and N, the same draws for every model; intervals and bands: '
                         f'{round(100 * bon.get("level", 0.95))}% bootstrap over problems, paired for the '
                         'difference. Majority vote breaks ties by a seeded draw and reads no reward model.</p>',
                         _bon_table(bon)]

    sample = results.get("sample_efficiency")
    if sample:
        figures["sample_efficiency.png"] = _png(_sample_efficiency_figure(sample))
        body += ["<h2>Sample efficiency</h2>", _img(figures["sample_efficiency.png"], "dev pairwise accuracy "
                 "against finetuning pairs"), _sample_efficiency_table(sample)]

    losses = results.get("loss_curves")
    if losses:
        figures["loss_curves.png"] = _png(_loss_figure(losses))
        body += ["<h2>Training loss</h2>", _img(figures["loss_curves.png"], "training loss against step")]

    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")
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

