"""The sample-efficiency table over seeds: grouping by size and seed, the spread over seeds beside the bootstrap."""

import statistics

import pytest

from codepmp.errors import InputError
from codepmp.evaluate.sweep import seed_metrics, spread_over_seeds, sweep_markdown, sweep_table

DEV_PAIRS = 20


def result(variant: str, size: int, seed: int, right: int) -> tuple[str, dict]:
    """A finetune task's result: `right` of the 20 dev pairs ranked correctly (the first ones)."""
    correct = [1.0] * right + [0.0] * (DEV_PAIRS - right)
    return (f"{variant}-{size}-{seed}.json", {"variant": variant, "subset": size, "seed": seed, "dev_pairs": DEV_PAIRS,
                                              "dev_pairwise_accuracy": right / DEV_PAIRS, "dev_correct": correct})


def test_spread_of_two_seeds_has_a_sample_std_and_one_seed_has_none():
    two = spread_over_seeds({124: 0.7, 123: 0.5})
    assert two["seeds"] == [123, 124] and two["values"] == [0.5, 0.7]
    assert (two["mean"], two["min"], two["max"]) == (pytest.approx(0.6), 0.5, 0.7)
    assert two["std"] == pytest.approx(0.1414213, abs=1e-6)  # sqrt(((0.1)^2 + (0.1)^2) / (2 - 1))
    one = spread_over_seeds({0: 0.55})
    assert (one["mean"], one["min"], one["max"]) == (0.55, 0.55, 0.55) and "std" not in one
    with pytest.raises(ValueError, match="at least one seed"):
        spread_over_seeds({})


def test_two_seeds_give_means_spreads_and_per_seed_differences():
    # size 8: pmp 12/20 and 16/20, control 11/20 and 11/20 -> differences +0.05 and +0.25
    rows = sweep_table([result("pmp", 8, 1, 12), result("control", 8, 2, 11), result("pmp", 8, 2, 16),
                        result("control", 8, 1, 11), result("control", 24, 1, 18), result("pmp", 24, 1, 17),
                        result("pmp", 24, 2, 19), result("control", 24, 2, 15)], n_resamples=200, seed=0)
    assert [r["pairs"] for r in rows] == [8, 24]
    pmp, control, diff = rows[0]["pmp"], rows[0]["control"], rows[0]["difference"]
    assert pmp["over_seeds"]["seeds"] == [1, 2] and pmp["over_seeds"]["values"] == [0.6, 0.8]
    assert (pmp["over_seeds"]["min"], pmp["over_seeds"]["max"]) == (0.6, 0.8)
    assert pmp["over_seeds"]["std"] == pytest.approx(statistics.stdev([0.6, 0.8]))
    assert control["over_seeds"]["std"] == 0.0
    assert diff["over_seeds"]["values"] == pytest.approx([0.05, 0.25])
    assert diff["over_seeds"]["mean"] == pytest.approx(0.15)
    # The bootstrap estimate is the accuracy averaged over seeds, with an interval around it.
    assert pmp["mean"] == pytest.approx(0.7) and pmp["low"] < 0.7 < pmp["high"]
    assert diff["mean"] == pytest.approx(0.15) and diff["low"] <= 0.15 <= diff["high"]
    assert rows[1]["difference"]["over_seeds"]["values"] == pytest.approx([-0.05, 0.2])
    metrics = seed_metrics(rows)
    assert metrics["pmp.n8"] == pytest.approx(0.7)
    assert (metrics["diff_seeds.n8_min"], metrics["diff_seeds.n8_max"]) == pytest.approx((0.05, 0.25))
    assert metrics["pmp_seeds.n24_std"] == pytest.approx(statistics.stdev([0.85, 0.95]))
    report = sweep_markdown(rows, DEV_PAIRS)
    assert "pmp over 2 seeds" in report and "means over 2 seeds" in report
    assert "| 8 | 0.7000 [" in report and "0.7000 [0.600, 0.800] sd 0.141" in report
    assert "+0.1500 [+0.050, +0.250] sd 0.141" in report


def test_one_seed_keeps_the_single_run_table():
    rows = sweep_table([result("pmp", 8, 0, 12), result("control", 8, 0, 11)], n_resamples=200, seed=0)
    (row,) = rows
    assert (row["pmp"]["mean"], row["control"]["mean"]) == (0.6, 0.55)
    assert "std" not in row["pmp"]["over_seeds"] and "std" not in row["difference"]["over_seeds"]
    metrics = seed_metrics(rows)
    assert "pmp_seeds.n8_std" not in metrics and metrics["pmp_seeds.n8_min"] == 0.6
    report = sweep_markdown(rows, DEV_PAIRS)
    assert "over 1 seeds" not in report and "One finetuning seed per size" in report
    assert report.splitlines()[-1].count("|") == 5  # four columns, no spread columns


def test_one_seed_matches_the_plain_bootstrap_of_that_run():
    from codepmp.evaluate.metrics import bootstrap_ci, paired_difference_ci

    pmp, control = result("pmp", 8, 0, 13), result("control", 8, 0, 9)
    (row,) = sweep_table([pmp, control], n_resamples=300, seed=5)
    assert (row["pmp"]["mean"], row["pmp"]["low"], row["pmp"]["high"]) == bootstrap_ci(pmp[1]["dev_correct"], 300, 5)
    assert (row["difference"]["low"], row["difference"]["high"]) == paired_difference_ci(
        pmp[1]["dev_correct"], control[1]["dev_correct"], 300, 5)[1:]


@pytest.mark.parametrize("results, message", [
    ([result("pmp", 8, 0, 12)], r"incomplete sizes: \[8\] \(\(size, seed\): \[\(8, 0\)\]\)"),
    ([result("pmp", 8, 0, 12), result("control", 8, 0, 11), result("pmp", 8, 1, 12)], r"\(8, 1\)"),
    ([result("pmp", 8, 0, 12), result("pmp", 8, 0, 13)], "pmp-8-0.json: a second pmp result for size 8, seed 0"),
    ([result("base", 8, 0, 12)], "variant 'base' is neither of"),
    ([("old.json", {"variant": "pmp", "subset": 8, "dev_correct": [1.0]})],
     r"old.json: a sweep result needs \['seed'\]"),
    ([result("pmp", 8, 0, 12), ("short.json", {"variant": "control", "subset": 8, "seed": 0, "dev_correct": [1.0]})],
     r"different dev sets: \[1, 20\]"),
])
def test_bad_results_are_clear_errors(results, message):
    with pytest.raises(InputError, match=message):
        sweep_table(results, n_resamples=10, seed=0)


def test_no_results_is_an_empty_table():
    assert sweep_table([], n_resamples=10, seed=0) == []
    assert "No sweep sizes" in sweep_markdown([], 0)


def _report(tmp_path, rows) -> str:
    from codepmp.evaluate.html import build_results, metric_entry, render_report

    results = build_results({"gsm8k": {"metrics": {"pairwise_accuracy": metric_entry(
        {"pmp": [1.0, 0.0, 1.0], "control": [0.0, 0.0, 1.0]}, n_resamples=20)}}}, sample_efficiency=rows)
    render_report(results, tmp_path / "report.html", None)
    page = (tmp_path / "report.html").read_text()
    return page[page.index(">Sample efficiency</h2>"):]


def test_html_report_shows_the_spread_over_seeds_beside_the_intervals(tmp_path):
    rows = sweep_table([result("pmp", 8, 1, 12), result("control", 8, 1, 11), result("pmp", 8, 2, 16),
                        result("control", 8, 2, 11)], n_resamples=200, seed=0)
    section = _report(tmp_path, rows)
    assert section.count("over 2 seeds: mean [min, max]</th>") == 3  # pmp, control, pmp − control
    assert "<td>0.700 [0.600, 0.800] sd 0.141</td>" in section
    assert "<td>+0.150 [+0.050, +0.250] sd 0.141</td>" in section
    pmp = rows[0]["pmp"]
    assert f"<td>{pmp['mean']:.3f} [{pmp['low']:.3f}, {pmp['high']:.3f}]</td>" in section  # the bootstrap stays
    assert "means over 2 finetuning seeds" in section


def test_html_report_with_one_seed_says_so_and_adds_no_spread_columns(tmp_path):
    section = _report(tmp_path, sweep_table([result("pmp", 8, 0, 12), result("control", 8, 0, 11)], 200, 0))
    assert "over 1 seeds" not in section and "mean [min, max]" not in section
    assert "one finetuning seed per size" in section


def test_html_report_refuses_a_spread_without_its_range(tmp_path):
    from codepmp.evaluate.html import check_results

    rows = sweep_table([result("pmp", 8, 0, 12), result("control", 8, 0, 11)], 200, 0)
    del rows[0]["pmp"]["over_seeds"]["min"]
    with pytest.raises(ValueError, match=r"\['sample_efficiency'\]\[0\]\['pmp'\]\['over_seeds'\]: needs seeds"):
        check_results({"domains": {}, "sample_efficiency": rows})


def test_clustered_results_resample_problems_not_pairs():
    """Ten problems of three pairs each, all three right or all wrong: a row bootstrap sees 30 independent pairs
    and gives a narrower interval than the cluster bootstrap over the 10 problems."""
    outcomes = [float(problem % 2) for problem in range(10) for _ in range(3)]
    design = {"dev_clusters": [f"p{problem}" for problem in range(10) for _ in range(3)],
              "dev_domains": ["gsm8k"] * 30}

    def results(clustered: bool) -> list[tuple[str, dict]]:
        return [(f"{variant}.json", {"variant": variant, "subset": 4, "seed": 0, "dev_correct": outcomes,
                                     **(design if clustered else {})}) for variant in ("pmp", "control")]

    (rows,) = sweep_table(results(False), n_resamples=2000, seed=0)
    (clustered,) = sweep_table(results(True), n_resamples=2000, seed=0)
    assert clustered["pmp"]["mean"] == rows["pmp"]["mean"] == 0.5
    assert clustered["pmp"]["high"] - clustered["pmp"]["low"] > rows["pmp"]["high"] - rows["pmp"]["low"]
