"""The README's tables from a results CSV (`python -m i3ad report`) and the comparison of two evaluations."""

from __future__ import annotations

import csv
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tiny_checkpoints import save_untrained_checkpoint

from i3ad.checkpoints import load_checkpoint, save_record
from i3ad.cli import main
from i3ad.evaluation import RESULT_COLUMNS
from i3ad.plots import auroc_vs_iterations
from i3ad.results import compare_runs, headline, load_results, summary_tables
from i3ad.scoring import DetectionSettings
from i3ad.shipped import SHIPPED_SETTINGS

ROOT = Path(__file__).resolve().parent.parent


def _row(category, model, iterations, tau, image_auroc, pixel_auroc=math.nan, calibrated=False, subtracted=True):
    inpainting = model != "ae"
    shipped = SHIPPED_SETTINGS.of(model)  # the table holds each model's shipped iteration rule
    return {
        "category": category,
        "model": model,
        "iterations": iterations,
        "ssim_threshold": tau if inpainting else math.nan,
        "calibrated_threshold": calibrated,
        "step0_cell_size": 8 if inpainting else math.nan,
        "step0_hidden_groups": 1 if inpainting else math.nan,
        "shrinking_masks": shipped.shrinking_masks if inpainting else math.nan,
        "iteration_painting": shipped.iteration_painting if inpainting else math.nan,
        "last_painting_scores": shipped.last_painting_scores if inpainting else math.nan,
        "anomaly_measure": "ssim+gms",
        "smoothing_sigma": 8.0,
        "normal_error_subtracted": subtracted,
        "mean_mask_share": 1.0,
        "image_auroc": image_auroc,
        "image_f1_max": 0.5,
        "pixel_auroc": pixel_auroc,
        "aupro": math.nan,
    }


@pytest.fixture
def results() -> pd.DataFrame:
    rows = []
    for category, base in [("a", 0.8), ("b", 0.6)]:
        rows.append(_row(category, "ae", 0, None, base - 0.1, pixel_auroc=0.7))
        rows.append(_row(category, "ae", 0, None, base - 0.2, pixel_auroc=0.6, subtracted=False))
        for t in range(3):
            rows.append(_row(category, "i3ad", t, 0.4321, base + 0.01 * t, pixel_auroc=0.9, calibrated=True))
            raw = _row(category, "i3ad", t, 0.4321, base - 0.1, pixel_auroc=0.8, calibrated=True, subtracted=False)
            rows.append(raw)
            rows.append(_row(category, "i3ad", t, 0.5, base - 0.05))
    return pd.DataFrame(rows)[list(RESULT_COLUMNS)]


def test_headline_takes_the_calibrated_rows_at_the_default_iterations(results):
    rows = headline(results, SHIPPED_SETTINGS.with_(iterations=2))
    i3ad = rows[rows["model"] == "i3ad"].set_index("category")["image_auroc"]
    assert i3ad.to_dict() == pytest.approx({"a": 0.82, "b": 0.62})
    assert len(rows[rows["model"] == "ae"]) == 2


def test_the_iterations_chart_draws_an_inpainting_model_of_any_name(results):
    shipped = auroc_vs_iterations(results)
    assert {trace.name for trace in shipped.data} == {"a", "b", "mean"}
    # A user's table (I3AD_RESULTS in the app) whose model is not called "i3ad" drew an empty chart.
    mine = results.replace({"model": {"i3ad": "mine"}}).assign(shrinking_masks=False, iteration_painting="hole")
    renamed = auroc_vs_iterations(mine)  # at the library's default settings, as an unknown model is
    assert {trace.name for trace in renamed.data} == {"a", "b", "mean"}
    assert "of mine against" in renamed.layout.title.text
    assert list(renamed.data[-1].y) == pytest.approx([0.7, 0.71, 0.72])  # the mean over categories, T = 0..2


def test_rows_of_another_step0_density_are_not_the_defaults(results):
    denser = results[results["model"] == "i3ad"].assign(step0_hidden_groups=3, image_auroc=0.0)
    rows = headline(pd.concat([results, denser]), SHIPPED_SETTINGS.with_(iterations=2))
    assert (rows["image_auroc"] > 0).all()
    rows = headline(pd.concat([results, denser]), SHIPPED_SETTINGS.with_(iterations=2, step0_hidden_groups=3))
    assert (rows.loc[rows["model"] == "i3ad", "image_auroc"] == 0).all()
    variants = summary_tables(pd.concat([results, denser]))["scoring_variants"]
    assert sorted(variants["step0_hidden_groups"].unique()) == [1, 3]


def test_tables_written_before_the_step0_density_existed_still_load(results, tmp_path):
    path = tmp_path / "old.csv"
    results.drop(columns="step0_hidden_groups").to_csv(path, index=False)
    table = load_results(path)
    inpainting = table["ssim_threshold"].notna()
    assert (table.loc[inpainting, "step0_hidden_groups"] == 1).all()
    assert table.loc[~inpainting, "step0_hidden_groups"].isna().all()
    defaults = SHIPPED_SETTINGS.with_(iterations=2)
    assert len(headline(table, defaults)) == len(headline(results, defaults))


def test_tables_written_before_the_iteration_rules_existed_read_as_the_rule_of_then(results, tmp_path):
    path = tmp_path / "old.csv"
    rule = ["shrinking_masks", "iteration_painting", "last_painting_scores"]
    results.drop(columns=rule).to_csv(path, index=False)
    table = load_results(path)
    inpainting = table["ssim_threshold"].notna()
    assert (table.loc[inpainting, "iteration_painting"] == "hole").all()
    assert not table.loc[inpainting, "shrinking_masks"].astype(bool).any()
    assert not table.loc[inpainting, "last_painting_scores"].astype(bool).any()
    assert table.loc[~inpainting, rule].isna().all().all()
    assert sorted(headline(table, DetectionSettings(iterations=2))["model"]) == ["ae", "ae", "i3ad", "i3ad"]
    assert sorted(headline(table)["model"]) == ["ae", "ae"]  # the shipped i3ad iterates by another rule
    # A table written after the iteration rules got their columns, before last-painting scores got theirs.
    results.drop(columns="last_painting_scores").to_csv(path, index=False)
    table = load_results(path)
    assert not table.loc[table["ssim_threshold"].notna(), "last_painting_scores"].astype(bool).any()
    assert len(headline(table)) == len(headline(results))


def test_each_model_is_summarised_at_its_shipped_settings(results):
    # i3ad-small has its own shipped settings; a model the shipped ones do not name is summarised at the library's.
    others = [
        _row(c, model, t, 0.4, 0.5 + 0.1 * t, calibrated=True)
        for model in ("i3ad-small", "i3ad-mine")
        for c in ("a", "b")
        for t in range(3)
    ]
    table = pd.concat([results, pd.DataFrame(others)[list(RESULT_COLUMNS)]])
    rows = headline(table).set_index(["model", "category"])
    assert rows.loc[("i3ad", "a"), "iterations"] == SHIPPED_SETTINGS.of("i3ad").iterations == 2
    assert rows.loc[("i3ad-small", "a"), "iterations"] == SHIPPED_SETTINGS.of("i3ad-small").iterations == 0
    assert rows.loc[("i3ad-small", "a"), "image_auroc"] == pytest.approx(0.5)
    assert rows.loc[("i3ad-mine", "a"), "iterations"] == DetectionSettings().iterations == 1
    assert rows.loc[("i3ad-mine", "a"), "image_auroc"] == pytest.approx(0.6)
    # The same network's rows under another iteration rule are not its shipped ones.
    other_rule = results[results["model"] == "i3ad"].assign(iteration_painting="hole", image_auroc=0.0)
    assert (headline(pd.concat([table, other_rule]))["image_auroc"] > 0).all()


def test_summary_tables_mean_over_categories(results):
    tables = summary_tables(results, SHIPPED_SETTINGS.with_(iterations=1))
    mean = tables["per_category"].set_index("category").loc["mean"]
    assert mean["i3ad image AUROC"] == pytest.approx(0.71)
    assert mean["ae image AUROC"] == pytest.approx(0.6)
    curve = tables["mean_by_iterations"].set_index("model").loc["i3ad"]
    assert [curve[f"T={t}"] for t in range(3)] == pytest.approx([0.70, 0.71, 0.72])
    normal_error = tables["normal_error"].set_index(["model", "normal_error_subtracted"])
    assert normal_error.loc[("i3ad", False), "T=0"] == pytest.approx(0.6)
    assert normal_error.loc[("i3ad", True), "T=2"] == pytest.approx(0.72)
    assert normal_error.loc[("ae", False), "T=0"] == pytest.approx(0.5)
    assert normal_error.loc[("ae", True), "T=0"] == pytest.approx(0.6)
    raw = summary_tables(results, SHIPPED_SETTINGS.with_(iterations=1, subtract_normal_error=False))
    assert raw["per_category"].set_index("category").loc["mean", "i3ad image AUROC"] == pytest.approx(0.6)


def test_means_over_different_sets_of_categories_are_not_set_side_by_side(results):
    # A second network trained on category "a" only, as in a check table with extra seeds.
    seed1 = results[(results["model"] == "i3ad") & (results["category"] == "a")].assign(model="i3ad-seed1")
    same_settings = SHIPPED_SETTINGS.of("i3ad").with_(iterations=1)  # for both networks
    tables = summary_tables(pd.concat([results, seed1]), same_settings)
    mean = tables["per_category"].set_index("category").loc["mean"]
    assert mean["i3ad image AUROC"] == pytest.approx(0.71)
    assert math.isnan(mean["i3ad-seed1 image AUROC"])  # its only category is no mean next to the others
    curves = tables["mean_by_iterations"].set_index("model")
    assert curves.loc["i3ad", "categories"] == "a, b"
    assert curves.loc["i3ad-seed1", "categories"] == "a"
    assert curves.loc["i3ad-seed1", "T=1"] == pytest.approx(0.81)
    for name in ("thresholds", "scoring_variants", "normal_error"):
        assert "categories" in tables[name].columns
    assert "categories" not in summary_tables(results)["mean_by_iterations"].columns  # one set: no column


def test_fixed_thresholds_close_to_each_other_are_not_merged(results):
    close = [_row(c, "i3ad", 1, tau, auroc) for c in ("a", "b") for tau, auroc in ((0.795, 0.9), (0.8, 0.7))]
    table = pd.concat([results, pd.DataFrame(close)[list(RESULT_COLUMNS)]])
    means = summary_tables(table, SHIPPED_SETTINGS.with_(iterations=1))["thresholds"].set_index(["model", "tau"])["T=1"]
    assert means[("i3ad", "0.795")] == pytest.approx(0.9) and means[("i3ad", "0.8")] == pytest.approx(0.7)
    assert means[("i3ad", "0.5")] == pytest.approx(0.65) and means[("i3ad", "calibrated")] == pytest.approx(0.71)


def test_compare_runs_reports_the_largest_change_per_model(results):
    results = results.assign(aupro=0.7)
    other = results.copy()
    other.loc[(other["category"] == "a") & (other["iterations"] == 1), "image_auroc"] -= 0.03
    other.loc[other["category"] == "b", "pixel_auroc"] += 0.002
    other.loc[other["category"] == "b", "aupro"] -= 0.005
    # Thresholds written with fewer decimals still match.
    other["ssim_threshold"] = other["ssim_threshold"].round(4)
    changes = compare_runs(results, other).set_index(["category", "model"])
    assert changes.loc[("a", "i3ad"), "largest change of image AUROC"] == pytest.approx(0.03)
    assert changes.loc[("b", "i3ad"), "largest change of image AUROC"] == pytest.approx(0.0)
    assert changes.loc[("b", "i3ad"), "largest change of pixel AUROC"] == pytest.approx(0.002)
    assert changes.loc[("b", "i3ad"), "largest change of AUPRO"] == pytest.approx(0.005)
    assert changes.loc[("a", "i3ad"), "rows"] == 9


def test_compare_runs_without_common_settings_is_an_error(results):
    other = results.assign(smoothing_sigma=4.0)
    with pytest.raises(ValueError, match="share no settings"):
        compare_runs(results, other)


def test_an_autoencoder_only_table_compares_with_a_full_one(results, tmp_path):
    # Without I3AD rows the rule columns are empty (read as floats), and the merge refused to match them with text.
    full, autoencoder = tmp_path / "full.csv", tmp_path / "ae.csv"
    results.to_csv(full, index=False)
    results[results["model"] == "ae"].to_csv(autoencoder, index=False)
    changes = compare_runs(load_results(full), load_results(autoencoder))
    assert changes["model"].tolist() == ["ae", "ae"] and changes["rows"].tolist() == [2, 2]


def test_report_picks_the_rows_of_an_iteration_rule(results, tmp_path, capsys):
    path = tmp_path / "rules.csv"
    hole = results[results["model"] == "i3ad"].assign(shrinking_masks=False, iteration_painting="hole", image_auroc=0.1)
    pd.concat([results, hole]).to_csv(path, index=False)
    assert main(["report", "--results", str(path), "--iterations", "1"]) == 0
    assert "| a | 0.700 | 0.810 |" in capsys.readouterr().out  # the AE, then i3ad at its shipped rule
    assert main(["report", "--results", str(path), "--iterations", "1", "--iteration-painting", "hole"]) == 0
    printed = capsys.readouterr().out  # shrinking masks stay the shipped i3ad's: no rows have both
    assert "note: no i3ad rows at its summary settings; its rows have each of them, but not all together" in printed
    hole_rule = ["--no-shrinking-masks", "--iteration-painting", "hole"]
    args = ["report", "--results", str(path), "--iterations", "1", *hole_rule]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| a | 0.700 | 0.100 |" in printed and "iteration painting hole, shrinking masks off" in printed
    # Rows scored by their last painting are summarised only when asked for.
    last = results[results["model"] == "i3ad"].assign(last_painting_scores=True, image_auroc=0.2)
    pd.concat([results, last]).to_csv(path, index=False)
    assert main(["report", "--results", str(path), "--iterations", "1"]) == 0
    assert "| a | 0.700 | 0.810 |" in capsys.readouterr().out
    assert main(["report", "--results", str(path), "--iterations", "1", "--last-painting-scores"]) == 0
    printed = capsys.readouterr().out
    assert "| a | 0.700 | 0.200 |" in printed and "last-painting scores on" in printed


def test_report_on_a_table_with_no_rows_at_the_summary_settings_explains_instead_of_failing(results, tmp_path, capsys):
    # A check table of one network of another name, evaluated with rules the summary does not assume for it.
    path = tmp_path / "check.csv"
    results[results["model"] == "i3ad"].assign(model="i3ad-seed1").to_csv(path, index=False)
    tables = summary_tables(load_results(path))
    assert tables["per_category"].empty  # no rows, and so no mean row of nothing
    assert main(["report", "--results", str(path)]) == 0
    assert "note: no i3ad-seed1 rows at its summary settings" in capsys.readouterr().out


def test_report_summarises_each_model_at_its_own_checkpoints_settings(results, tmp_path, capsys, cli_error):
    # A network of one's own trained as "i3ad" with train's defaults (T = 1, each mask painted at once).
    path = tmp_path / "own.csv"
    own = results.assign(shrinking_masks=False, iteration_painting="hole")
    own.loc[own["model"] == "i3ad", "smoothing_sigma"] = 2.0  # as the untrained checkpoints below are set
    own.to_csv(path, index=False)
    for category in ("a", "b"):
        save_untrained_checkpoint(tmp_path / "ck", category, "i3ad", size=16)
    assert main(["report", "--results", str(path)]) == 0
    assert "note: no i3ad rows at its summary settings" in capsys.readouterr().out
    assert main(["report", "--results", str(path), "--checkpoints", str(tmp_path / "ck")]) == 0
    printed = capsys.readouterr().out
    assert "note:" not in printed and "| a | 0.700 | 0.810 |" in printed  # the AE, then i3ad at T = 1
    # One model's checkpoints at different defaults cannot pick one setting for its rows.
    other = load_checkpoint(tmp_path / "ck" / "b" / "i3ad")
    save_record(dataclasses.replace(other, settings=other.settings.with_(iterations=2)), tmp_path / "ck" / "b" / "i3ad")
    assert main(["report", "--results", str(path), "--checkpoints", str(tmp_path / "ck")]) == 2
    error = cli_error()
    assert "the i3ad checkpoints under" in error and "differ in their default settings" in error
    assert main(["report", "--results", str(path), "--compare", str(path), "--iterations", "1"]) == 2
    assert "--iterations chooses the rows of the summary tables" in cli_error()


def test_report_command_prints_the_tables_and_the_comparison(results, tmp_path, capsys):
    path = tmp_path / "results.csv"
    results.to_csv(path, index=False)
    assert main(["report", "--results", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "| mean |" in printed and "T=2" in printed
    assert main(["report", "--results", str(path), "--compare", str(path)]) == 0
    assert "| a | i3ad | 0.0000 |" in capsys.readouterr().out


def test_report_into_a_pipe_closed_early_ends_quietly(results, tmp_path):
    """`python -m i3ad report ... | head`: the reader leaves before the tables are written."""
    path = tmp_path / "results.csv"
    results.to_csv(path, index=False)
    command = [sys.executable, "-m", "i3ad", "report", "--results", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    process.stdout.close()  # the reader is gone before the first line
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 141, errors.decode()
    assert errors.decode() == ""  # no "Broken pipe" error, no traceback


def test_report_summarises_another_step0_density_and_t(results, tmp_path, capsys):
    path = tmp_path / "dense.csv"
    results.assign(step0_hidden_groups=results["step0_hidden_groups"] * 3).to_csv(path, index=False)
    assert main(["report", "--results", str(path), "--hidden-groups", "3", "--iterations", "2"]) == 0
    printed = capsys.readouterr().out
    assert "i3ad: T = 2, each step-0 mask hiding 3 of 4 grid groups" in printed
    assert "| a | 0.700 | 0.820 |" in printed  # the AE, then I3AD at T = 2
    assert main(["report", "--results", str(path)]) == 0  # at the shipped step 0: a hint, not empty tables alone
    assert "note: no i3ad rows at its summary settings; step0_hidden_groups: 3 (summary: 1)" in capsys.readouterr().out
    assert main(["report", "--results", str(path), "--hidden-groups", "4"]) == 2
    assert "each step-0 mask hides 1 to 3 of the 4 grid groups" in capsys.readouterr().err
    assert main(["report", "--results", str(path), "--iterations", "11"]) == 2
    assert "iterations must be between 0 and 10" in capsys.readouterr().err
    # A T the table does not hold: I3AD would silently be missing from the first table.
    assert main(["report", "--results", str(path), "--hidden-groups", "3", "--iterations", "5"]) == 0
    assert "note: no i3ad rows at T = 5; its rows hold T = 0..2" in capsys.readouterr().out


def test_report_names_the_settings_that_keep_a_model_out_of_its_tables(results, tmp_path, capsys):
    path = tmp_path / "sigma4.csv"
    # Checkpoints calibrated with --sigma 4 (an evaluation of them): the note blamed --hidden-groups, and the
    # autoencoder vanished without one.
    results.assign(smoothing_sigma=4.0).to_csv(path, index=False)
    assert main(["report", "--results", str(path)]) == 0
    printed = capsys.readouterr().out
    for model in ("ae", "i3ad"):
        assert f"note: no {model} rows at its summary settings; smoothing_sigma: 4 (summary: 8)\n" in printed
    # Each setting present, but not together: the note says so rather than giving no reason.
    mixed = results.copy()
    autoencoder = mixed["model"] == "ae"
    mixed.loc[autoencoder, "smoothing_sigma"] = [4.0, 8.0] * (autoencoder.sum() // 2)
    mixed.loc[autoencoder & (mixed["smoothing_sigma"] == 8.0), "normal_error_subtracted"] = False
    mixed.loc[autoencoder & (mixed["smoothing_sigma"] == 4.0), "normal_error_subtracted"] = True
    # And a second I3AD model that lacks the summary's T while i3ad has it went missing without a note.
    mine = pd.DataFrame([_row(c, "i3ad-mine", 0, 0.4, 0.5, calibrated=True) for c in ("a", "b")])
    pd.concat([mixed, mine[list(RESULT_COLUMNS)]]).to_csv(path, index=False)
    assert main(["report", "--results", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "note: no ae rows at its summary settings; its rows have each of them, but not all together" in printed
    assert "note: no i3ad-mine rows at T = 1; its rows hold T = 0..0" in printed


def test_report_summarises_the_verdicts_of_a_per_defect_table(tmp_path, capsys, cli_error):
    from i3ad.evaluation import BY_DEFECT_COLUMNS

    rows = [  # defect, images, flagged share
        ("good", 10, 0.1),
        ("crack", 3, 1.0),  # 3 of 3 found
        ("scratch", 1, 0.0),  # 0 of 1
    ]
    table = pd.DataFrame(
        [
            {
                "category": "widget",
                "model": "i3ad",
                "iterations": 1,
                "defect": d,
                "defect_images": n,
                "flagged_share": f,
            }
            for d, n, f in rows
        ],
        columns=list(BY_DEFECT_COLUMNS),
    )
    path = tmp_path / "by_defect.csv"
    table.to_csv(path, index=False)
    assert main(["report", "--results", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "| category | model | T | normal images | false alarms | defective images | detected |" in printed
    assert "| widget | i3ad | 1 | 10 | 0.100 | 4 | 0.750 |" in printed  # detections pooled over the types' images
    assert main(["report", "--results", str(path), "--compare", str(path)]) == 2
    assert "is a per-defect table: --compare and --update-cards take a results table" in cli_error()


def test_report_refuses_a_table_that_evaluate_did_not_write(tmp_path, capsys):
    by_defect = tmp_path / "by_defect.csv"
    pd.DataFrame(
        {"category": ["a"], "model": ["i3ad"], "iterations": [1], "defect": ["crack"], "image_auroc": [0.9]}
    ).to_csv(by_defect, index=False)
    assert main(["report", "--results", str(by_defect)]) == 2
    err = capsys.readouterr().err
    assert "is not a results table of `python -m i3ad evaluate`" in err and "--by-defect" in err
    # Not a CSV at all: the same kind of message, not the parser's traceback.
    text = tmp_path / "notes.csv"
    text.write_text('a,b\n1,2,3,4\n"unclosed\n')
    assert main(["report", "--results", str(text)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {text} is not a results table of `python -m i3ad evaluate`")
    # A metric column holding text: the same kind of message, not pandas' error from averaging it.
    table = pd.read_csv(ROOT / "results" / "small_synthetic_defects_shared_gpu.csv")
    table["image_auroc"] = "x"
    edited = tmp_path / "edited.csv"
    table.to_csv(edited, index=False)
    assert main(["report", "--results", str(edited)]) == 2
    assert "is not a results table of `python -m i3ad evaluate`: image_auroc holds text" in capsys.readouterr().err


def test_report_names_a_folder_an_empty_table_and_a_bad_comparison_before_printing(
    results, tmp_path, capsys, cli_error
):
    assert main(["report", "--results", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder; give a results CSV" in cli_error()
    header_only = tmp_path / "interrupted.csv"
    results.head(0).to_csv(header_only, index=False)
    assert main(["report", "--results", str(header_only)]) == 2
    assert f"{header_only} has no rows" in cli_error()
    # A comparison that cannot be made prints the error only, not the heading of a table that never comes.
    table = tmp_path / "results.csv"
    results.to_csv(table, index=False)
    assert main(["report", "--results", str(table), "--compare", str(header_only)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and f"{header_only} has no rows" in printed.err


def test_updating_cards_without_checkpoints_is_an_error(results, tmp_path, capsys):
    results.to_csv(tmp_path / "results.csv", index=False)
    assert main(["report", "--results", str(tmp_path / "results.csv"), "--update-cards", str(tmp_path / "none")]) == 2
    assert f"no checkpoints under {tmp_path / 'none'}" in capsys.readouterr().err


def test_every_committed_results_table_has_as_many_fields_in_each_row_as_in_its_header():
    # A row pasted from a run that wrote fewer columns would shift its values under the wrong headers.
    tables = sorted((Path(__file__).parents[1] / "results").glob("*.csv"))
    assert tables
    for table in tables:
        with table.open(newline="") as file:
            widths = {len(row) for row in csv.reader(file)}
        assert len(widths) == 1, f"{table.name}: rows of {sorted(widths)} fields"
