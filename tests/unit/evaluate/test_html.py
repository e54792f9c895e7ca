"""The HTML report: every section, embedded PNGs, escaped data text, and pages without the optional parts."""

import base64
import fnmatch
import json
import random
import re
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest

from codepmp.evaluate import html
from codepmp.evaluate.html import best_of_n_entry, build_results, check_results, metric_entry, render_report
from codepmp.evaluate.metrics import best_of_n_compare, best_of_n_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"


def curves_for(scores_noise: float, seed: int) -> dict:
    rng = random.Random(seed)
    pool = [{"problem_id": f"q{p}", "answer": str(rng.randint(0, 2)), "correct": rng.random() < 0.3}
            for p in range(6) for _ in range(4)]
    scores = [float(r["correct"]) + scores_noise * rng.random() for r in pool]
    return best_of_n_curves(pool, scores, trials=3, seed=0, n_resamples=100)


def full_results(model: str = "pmp") -> dict:
    rng = random.Random(0)
    a = [float(rng.random() < 0.7) for _ in range(40)]
    b = [float(rng.random() < 0.5) for _ in range(40)]
    bon = best_of_n_entry({model: curves_for(0.5, 1), "control": curves_for(2.0, 1)})
    return build_results(
        {"gsm8k": {"metrics": {"pairwise_accuracy": metric_entry({model: a, "control": b}, n_resamples=100)},
                   "best_of_n": bon},
         "logic": {"metrics": {"option_accuracy": metric_entry({model: a[:20], "control": b[:20]}, n_resamples=100)}}},
        sample_efficiency=[{"pairs": 64, model: 0.55, "control": 0.52}, {"pairs": 128, model: 0.6, "control": 0.55}],
        loss_curves={"pretrain": [(1, 0.9), (2, 0.7), (3, 0.65)], "finetune": [(1, 0.7), (2, 0.69)]},
        meta={"title": "evaluation", "run": "r-1"},
    )


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_has_every_section_and_embeds_its_figures(tmp_path):
    results = full_results()
    figures = render_report(results, tmp_path / "out" / "report.html", tmp_path / "figures")
    page = (tmp_path / "out" / "report.html").read_text()
    for heading in ("PMP vs control", "Best-of-N", "Sample efficiency", "Training loss", "gsm8k", "logic"):
        assert f">{heading}</h" in page, heading
    assert "pairwise accuracy" in page and "option accuracy" in page and "pmp − control (paired)" in page
    pngs = embedded_pngs(page)
    assert len(pngs) == 3 and all(png.startswith(PNG_MAGIC) for png in pngs)
    assert [f.name for f in figures] == ["best_of_n.png", "sample_efficiency.png", "loss_curves.png"]
    assert [f.read_bytes() for f in figures] == pngs
    assert "<script" not in page and "<link" not in page and "http://" not in page and "https://" not in page


def test_table_shows_each_model_and_the_paired_difference(tmp_path):
    results = full_results()
    entry = results["domains"]["gsm8k"]["metrics"]["pairwise_accuracy"]
    assert entry["items"] == 40 and set(entry["models"]) == {"pmp", "control"}
    assert entry["difference"]["mean"] == pytest.approx(entry["models"]["pmp"]["mean"]
                                                        - entry["models"]["control"]["mean"])
    render_report(results, tmp_path / "r.html", None)
    page = (tmp_path / "r.html").read_text()
    pmp = entry["models"]["pmp"]
    assert f"{pmp['mean']:.3f} [{pmp['low']:.3f}, {pmp['high']:.3f}]" in page


def test_best_of_n_entry_bands_the_reward_models_only():
    bon = full_results()["domains"]["gsm8k"]["best_of_n"]
    assert list(bon["curves"]) == ["pmp-rm", "control-rm", "majority", "random", "oracle"]
    assert bon["n"] == [1, 2, 4]
    assert {"low", "high"} <= set(bon["curves"]["pmp-rm"]) and "low" not in bon["curves"]["oracle"]


def test_results_are_plain_json():
    results = full_results()
    assert json.loads(json.dumps(results)) == results


def test_text_from_the_data_is_escaped(tmp_path):
    results = full_results(model=EVIL)
    results["domains"][EVIL] = results["domains"].pop("logic")
    results["meta"]["title"] = EVIL
    results["loss_curves"] = {r"$\notacommand$ " + EVIL: [[1, 0.5], [2, 0.4]]}
    render_report(results, tmp_path / "r.html", None)
    page = (tmp_path / "r.html").read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert len(embedded_pngs(page)) == 3


def test_optional_sections_may_be_missing(tmp_path):
    only_pairs = build_results({"gsm8k": {"metrics": {"pairwise_accuracy": metric_entry({"pmp": [1.0, 0.0]})}}})
    assert render_report(only_pairs, tmp_path / "a.html", tmp_path / "figures") == []
    page = (tmp_path / "a.html").read_text()
    assert "gsm8k" in page and "Best-of-N" not in page and "Sample efficiency" not in page
    assert "Training loss" not in page and not embedded_pngs(page)

    render_report({"domains": {}}, tmp_path / "b.html")
    assert "No evaluation domains" in (tmp_path / "b.html").read_text()

    bon_only = {"domains": {"gsm8k": {"best_of_n": best_of_n_entry({"pmp": curves_for(0.5, 2)})}}}
    figures = render_report(bon_only, tmp_path / "c.html", tmp_path / "figures")
    assert [f.name for f in figures] == ["best_of_n.png"]
    assert "No pairwise or option metrics" in (tmp_path / "c.html").read_text()


def test_malformed_results_fail_before_writing(tmp_path):
    bad = {"domains": {"gsm8k": {"metrics": {"pairwise_accuracy": {"models": {"pmp": {"mean": 0.5}}}}}}}
    with pytest.raises(ValueError, match="mean, low and high"):
        render_report(bad, tmp_path / "r.html")
    short = {"domains": {"gsm8k": {"best_of_n": {"n": [1, 2], "curves": {"oracle": {"mean": [1.0]}}}}}}
    with pytest.raises(ValueError, match="one value per N"):
        render_report(short, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_metric_entry_needs_the_same_items_for_every_model():
    with pytest.raises(ValueError, match="same items"):
        metric_entry({"pmp": [1.0, 0.0], "control": [1.0]})


PLUMBING = "dev pairs/pools are corrupted copies of the reference solution: a plumbing check, not a reward-model metric"


def test_plumbing_check_is_a_prominent_line_for_corrupted_data_only(tmp_path):
    corrupted = full_results()
    corrupted["meta"]["plumbing_check"] = PLUMBING
    corrupted["domains"]["gsm8k"]["metrics"]["pairwise_accuracy"]["plumbing_check"] = True
    corrupted["domains"]["gsm8k"]["best_of_n"]["plumbing_check"] = True
    render_report(corrupted, tmp_path / "c.html")
    page = (tmp_path / "c.html").read_text()
    assert f'<p class="warn" id="plumbing-check">{PLUMBING}</p>' in page
    assert page.index(PLUMBING) < page.index("PMP vs control")  # above every table
    assert page.count("(plumbing check)") == 2 and f"<dd>{PLUMBING}" not in page  # not repeated in the header
    render_report(full_results(), tmp_path / "s.html")
    sampled = (tmp_path / "s.html").read_text()
    assert "plumbing check" not in sampled and 'class="warn"' not in sampled


def test_pooled_and_clustered_entries_and_the_paired_best_of_n_row(tmp_path):
    values = {"pmp": [1.0, 1.0, 1.0, 0.0, 1.0, 0.0], "control": [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]}
    strata = ["gsm8k", "logiqa2", "logiqa2", "logiqa2", "gsm8k", "gsm8k"]
    clusters = ["g1", "i1", "i1", "i1", "g2", "g3"]
    entry = metric_entry(values, n_resamples=100, clusters=clusters, strata=strata)
    assert entry["items"] == 6 and entry["clusters"] == 4 and entry["strata"] == ["gsm8k", "logiqa2"]
    assert entry["models"]["pmp"]["mean"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert entry["difference"]["mean"] == pytest.approx(entry["models"]["pmp"]["mean"]
                                                        - entry["models"]["control"]["mean"])
    rng = random.Random(3)
    pool = [{"problem_id": f"q{p}", "answer": str(rng.randint(0, 2)), "correct": rng.random() < 0.4}
            for p in range(8) for _ in range(4)]
    compared = best_of_n_compare(pool, {"pmp": [float(r["correct"]) for r in pool],
                                        "control": [rng.random() for _ in pool]}, trials=4, n_resamples=100)
    bon = best_of_n_entry(compared["curves"], compared["difference"])
    results = build_results({"all": {"metrics": {"pairwise_accuracy": entry}}, "gsm8k": {"best_of_n": bon}})
    render_report(results, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "6 (4 clusters)" in page and "mean of 2 domains: gsm8k, logiqa2" in page
    assert "pmp − control rm (paired)" in page
    d = bon["difference"]
    assert f"{d['mean'][-1]:+.3f} [{d['low'][-1]:+.3f}, {d['high'][-1]:+.3f}]" in page
    broken = json.loads(json.dumps(results))
    broken["domains"]["gsm8k"]["best_of_n"]["difference"]["low"].pop()
    with pytest.raises(ValueError, match="difference"):
        render_report(broken, tmp_path / "x.html")


def test_meta_and_plumbing_text_are_escaped_by_the_template(tmp_path):
    results = full_results()
    results["meta"].update({"note": EVIL, EVIL: "label", "plumbing_check": EVIL})
    results["domains"]["gsm8k"]["metrics"][EVIL] = results["domains"]["gsm8k"]["metrics"]["pairwise_accuracy"]
    render_report(results, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<script" not in page.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<dd>{escaped}</dd>" in page and f"<dt>{escaped}</dt>" in page
    assert f'<p class="warn" id="plumbing-check">{escaped}</p>' in page


def problem(results: dict) -> str:
    with pytest.raises(ValueError) as raised:
        check_results(results)
    return str(raised.value)


def test_schema_violations_name_the_path_of_the_bad_field():
    results = json.loads(json.dumps(full_results()))
    pmp = results["domains"]["gsm8k"]["metrics"]["pairwise_accuracy"]["models"]["pmp"]
    pmp["low"] = "0.1"
    assert problem(results) == ("results['domains']['gsm8k']['metrics']['pairwise_accuracy']['models']['pmp']['low']: "
                                "input should be a valid number")
    del pmp["low"]
    assert problem(results) == ("results['domains']['gsm8k']['metrics']['pairwise_accuracy']['models']['pmp']: "
                                "needs mean, low and high (missing 'low')")

    results = json.loads(json.dumps(full_results()))
    results["domains"]["gsm8k"]["best_of_n"]["curves"]["oracle"]["mean"].pop()
    assert problem(results).startswith("results['domains']['gsm8k']['best_of_n']['curves']['oracle']['mean']: "
                                       "mean (and low/high, if given) must have one value per N (3), not 2")

    results = json.loads(json.dumps(full_results()))
    results["sample_efficiency"][1]["pmp"] = {"mean": 0.6, "low": 0.5, "high": True}  # the path has no union tag
    assert problem(results) == "results['sample_efficiency'][1]['pmp']['high']: input should be a valid number"
    results["sample_efficiency"][1]["pmp"] = "0.6"
    assert problem(results) == "results['sample_efficiency'][1]['pmp']: input should be a valid number"

    results = json.loads(json.dumps(full_results()))
    results["meta"]["run"] = ["r-1"]
    assert problem(results) == ("results['meta']['run']: input should be a valid string; "
                                "or input should be a valid number")
    assert problem([]) == "results: must be a dict"


def test_the_template_ships_as_package_data():
    template = files("codepmp.evaluate") / "templates" / html.TEMPLATE
    assert template.is_file()
    pyproject = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["codepmp"]
    assert any(fnmatch.fnmatch(f"evaluate/templates/{html.TEMPLATE}", glob) for glob in globs)
