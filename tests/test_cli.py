"""The command line end to end on a synthetic category (train, evaluate, detect, calibrate, synth) and its errors."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from tiny_checkpoints import save_untrained_checkpoint

import i3ad.batching
from i3ad import cli
from i3ad.benchmark import convolution_time, run_benchmark
from i3ad.calibration import MAX_CALIBRATED_ITERATIONS
from i3ad.checkpoints import load_checkpoint, save_record
from i3ad.cli import main
from i3ad.data import index_category
from i3ad.detector import AnomalyDetector
from i3ad.synthetic import make_synthetic_category

# Small enough for two CPU cores (about 15 s uncontended), large enough for a real detector on the synthetic data.
SMALL = ["--image-size", "64", "--base-width", "8", "--batch-size", "8"]
I3AD_TRAIN = [*SMALL, "--steps", "80", "--learning-rate", "2e-3"]
AE_TRAIN = [*SMALL, "--latent-dim", "16", "--steps", "10"]


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory) -> tuple[Path, Path]:
    """(data_root, checkpoints root) with synthetic/i3ad and synthetic/ae trained once through the CLI."""
    data_root, _ = synthetic_root
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    common = ["train", "--data-root", str(data_root), "--category", "synthetic", "--out", str(checkpoints)]
    common += ["--device", "cpu", "--quiet"]
    assert main([*common, "--model", "i3ad", *I3AD_TRAIN]) == 0
    assert main([*common, "--model", "ae", *AE_TRAIN]) == 0
    return data_root, checkpoints


# --- end to end ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_writes_complete_checkpoints(trained):
    _, checkpoints = trained
    for name in ("i3ad", "ae"):
        folder = checkpoints / "synthetic" / name
        files = {"config.json", "model.safetensors", "detector.json", "normal_error.safetensors", "README.md"}
        assert {p.name for p in folder.iterdir()} == files
    record = json.loads((checkpoints / "synthetic" / "i3ad" / "detector.json").read_text())
    assert record["category"] == "synthetic" and record["name"] == "i3ad"
    assert record["preprocessing"] == {"image_size": 64, "channels": 3, "normalization": "none", "geometry": "stretch"}
    calibration = record["calibration"]
    assert -1.0 < calibration["ssim_threshold"] < 1.0
    assert record["detection"]["ssim_threshold"] == calibration["ssim_threshold"]
    assert len(calibration["score_thresholds"]) == 11
    assert record["detection"]["subtract_normal_error"] is True
    assert load_checkpoint(checkpoints / "synthetic" / "i3ad").calibration.normal_error.steps == 11
    assert calibration["holdout_images"] == 6  # 10 % of the 60 training images
    assert record["info"]["train_images"] == 54
    assert record["info"]["training"]["steps"] == 80
    losses = [entry["loss"] for entry in record["info"]["train_log"] if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses)
    ae = load_checkpoint(checkpoints / "synthetic" / "ae")
    assert ae.kind == "ae" and ae.calibration.ssim_threshold is None
    assert len(ae.calibration.score_thresholds) == 1


@pytest.mark.slow
def test_evaluate_by_defect_gives_one_row_per_defect_type(trained, tmp_path, capsys):
    data_root, checkpoints = trained
    out = tmp_path / "by_defect.csv"
    args = ["evaluate", "--data-root", str(data_root), "--checkpoints", str(checkpoints), "--category", "synthetic"]
    assert main([*args, "--by-defect", "--device", "cpu", "--out", str(out)]) == 0
    assert "defect types" in capsys.readouterr().out
    table = pd.read_csv(out)
    defects = sorted(p.name for p in (data_root / "synthetic" / "test").iterdir() if p.name != "good")
    for model in ("i3ad", "ae"):
        rows = table[table["model"] == model]
        assert rows["defect"].tolist() == ["good", *defects]  # the normal images first: their false alarms
        defect_rows = rows[rows["defect"] != "good"]
        assert ((defect_rows["defect_pixel_share"] > 0) & (defect_rows["defect_pixel_share"] < 1)).all()
        assert defect_rows[["image_auroc", "pixel_auroc", "aupro"]].apply(lambda c: c.between(0, 1)).all().all()
        assert rows["flagged_share"].between(0, 1).all()
    detector = load_checkpoint(checkpoints / "synthetic" / "i3ad")
    assert (table[table["model"] == "i3ad"]["iterations"] == detector.settings.iterations).all()
    # The verdicts of `detect` on the normal test images flag the share of them that the table gives.
    detect_out = tmp_path / "detections"
    good = data_root / "synthetic" / "test" / "good"
    assert (
        main(["detect", str(good), "--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--out", str(detect_out)])
        == 0
    )
    scores = pd.read_csv(detect_out / "scores.csv")
    flagged = table[(table["model"] == "i3ad") & (table["defect"] == "good")]["flagged_share"].item()
    assert (scores["verdict"] == "anomalous").mean() == pytest.approx(flagged, abs=1e-4)


def test_evaluate_convolution_flags_hold_during_the_run_only(trained, tmp_path, monkeypatch):
    data_root, checkpoints = trained
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # restored after the test
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    seen = []
    real_evaluate = cli.evaluate_detector

    def evaluate_detector(*args, **kwargs):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark))
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(cli, "evaluate_detector", evaluate_detector)
    args = ["evaluate", "--data-root", str(data_root), "--checkpoints", str(checkpoints), "--model", "ae"]
    args += ["--iterations", "0", "--device", "cpu", "--no-tf32", "--cudnn-benchmark", "--out", str(tmp_path / "r.csv")]
    assert main(args) == 0
    assert seen == [(False, True)]
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cudnn.benchmark  # the caller's settings are back


@pytest.mark.parametrize("flags, precision", [([], "fp32"), (["--bf16"], "bf16"), (["--fp16"], "fp16")])
def test_evaluate_passes_its_precision_on(trained, tmp_path, monkeypatch, capsys, flags, precision):
    data_root, checkpoints = trained
    seen = []
    real_evaluate = cli.evaluate_detector

    def evaluate_detector(*args, **kwargs):
        seen.append(kwargs["precision"])
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(cli, "evaluate_detector", evaluate_detector)
    args = ["evaluate", "--data-root", str(data_root), "--checkpoints", str(checkpoints), "--model", "ae"]
    assert main([*args, "--device", "cpu", *flags, "--out", str(tmp_path / "r.csv")]) == 0
    assert seen == [precision]
    assert ("applies on CUDA only" in capsys.readouterr().err) == (precision != "fp32")


def test_evaluate_takes_one_precision(trained, tmp_path, capsys):
    data_root, checkpoints = trained
    args = ["evaluate", "--data-root", str(data_root), "--checkpoints", str(checkpoints), "--bf16", "--fp16"]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path / "r.csv")])
    assert exit_.value.code == 2 and "not allowed with argument --bf16" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--bf16", "--fp16", "--compile"])
def test_evaluate_by_defect_refuses_what_it_would_ignore(trained, tmp_path, cli_error, flag):
    data_root, checkpoints = trained
    args = ["evaluate", "--data-root", str(data_root), "--checkpoints", str(checkpoints), "--by-defect", flag]
    assert main([*args, "--out", str(tmp_path / "r.csv")]) == 2
    assert "runs the networks in float32, uncompiled" in cli_error()
    assert not (tmp_path / "r.csv").exists()


def test_evaluate_sweeps_another_iteration_rule_and_refuses_it_per_defect(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    args = ["evaluate", "--data-root", str(data_root), "--checkpoints", str(checkpoints), "--model", "i3ad"]
    args += ["--iterations", "2", "--thresholds", "0.9", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "hole.csv")]) == 0
    assert (
        main([*args, "--shrinking-masks", "--iteration-painting", "cells", "--out", str(tmp_path / "cells.csv")]) == 0
    )
    assert main([*args, "--last-painting-scores", "--out", str(tmp_path / "last.csv")]) == 0
    hole, cells = pd.read_csv(tmp_path / "hole.csv"), pd.read_csv(tmp_path / "cells.csv")
    last = pd.read_csv(tmp_path / "last.csv")
    # Each row records the rule it was scored by, so that reports do not mix them.
    assert not hole["shrinking_masks"].any() and (hole["iteration_painting"] == "hole").all()
    assert cells["shrinking_masks"].all() and (cells["iteration_painting"] == "cells").all()
    assert not hole["last_painting_scores"].any() and last["last_painting_scores"].all()
    rule = ["shrinking_masks", "iteration_painting", "last_painting_scores"]
    hole, cells, last = hole.drop(columns=rule), cells.drop(columns=rule), last.drop(columns=rule)
    step0 = hole["iterations"] == 0
    # Step 0 is the same either way; the iterations are not.
    pd.testing.assert_frame_equal(hole[step0], cells[step0])
    pd.testing.assert_frame_equal(hole[step0], last[step0])
    assert not hole[~step0].equals(cells[~step0]) and not hole[~step0].equals(last[~step0])
    assert main([*args, "--by-defect", "--shrinking-masks", "--out", str(tmp_path / "d.csv")]) == 2
    assert "--by-defect scores each checkpoint at its own settings" in cli_error()
    assert not (tmp_path / "d.csv").exists()


@pytest.mark.slow
def test_evaluate_reaches_a_real_auroc(trained, tmp_path, capsys):
    data_root, checkpoints = trained
    out = tmp_path / "results" / "evaluation.csv"
    args = ["evaluate", "--data-root", str(data_root), "--checkpoints", str(checkpoints), "--category", "synthetic"]
    args += ["--iterations", "2", "--thresholds", "0.5", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    table = pd.read_csv(out)
    i3ad = table[table["model"] == "i3ad"]
    ae = table[table["model"] == "ae"]
    detector = load_checkpoint(checkpoints / "synthetic" / "i3ad")
    tau, default_t = detector.settings.ssim_threshold, detector.settings.iterations
    assert sorted(i3ad["iterations"].unique()) == [0, 1, 2]
    # The calibrated tau is added to the swept ones; every row comes raw and with the normal error subtracted.
    assert len(i3ad) == 3 * len({0.5, tau}) * 2
    assert (table["category"] == "synthetic").all()
    at_defaults = i3ad["calibrated_threshold"] & (
        i3ad["normal_error_subtracted"] == detector.settings.subtract_normal_error
    )
    default = i3ad[at_defaults & (i3ad["iterations"] == default_t)]
    assert len(default) == 1
    row = default.iloc[0]
    assert row["ssim_threshold"] == pytest.approx(tau, abs=1e-4)
    assert row["image_auroc"] >= 0.8, f"I3AD image AUROC at the default settings is {row['image_auroc']:.3f}"
    assert row["pixel_auroc"] >= 0.8
    assert 0.0 < row["aupro"] <= 1.0
    iterated = i3ad[at_defaults & (i3ad["iterations"] == 1)]
    assert 0.0 < iterated.iloc[0]["mean_mask_share"] < 1.0  # the SSIM mask hides some pixels, not all
    assert (i3ad[i3ad["iterations"] == 0]["mean_mask_share"] == 1.0).all()
    # The baseline's rows (raw and with its normal error) exist and are complete.
    assert sorted(ae["normal_error_subtracted"]) == [False, True]
    assert (ae["iterations"] == 0).all() and not ae["calibrated_threshold"].any()
    for column in ("image_auroc", "image_f1_max", "pixel_auroc", "aupro"):
        assert ae[column].between(0.0, 1.0).all()


@pytest.mark.slow
def test_detect_folder_with_a_corrupt_file(trained, tmp_path, capsys):
    data_root, checkpoints = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    index = index_category(data_root, "synthetic")
    for sample in index.test:
        shutil.copy(sample.image, inputs / f"{sample.defect}_{sample.image.name}")
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    # 249 bytes of UTF-8: within the file system's 255, but not once numbered and suffixed for its heat-map.
    defect = next(sample for sample in index.test if sample.defect != "good")
    shutil.copy(defect.image, inputs / ("\u691c" * 81 + ".png"))
    out = tmp_path / "detections"
    args = ["detect", str(inputs), "--checkpoint", str(checkpoints / "synthetic" / "i3ad")]
    args += ["--out", str(out), "--device", "cpu", "--save-masks"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "corrupt.png" in captured.err
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(index.test) + 2
    assert {Path(r["file"]).name for r in rows} == {p.name for p in inputs.iterdir()}
    by_name = {Path(r["file"]).name: r for r in rows}
    broken = by_name.pop("corrupt.png")
    assert broken["error"] and not broken["score"] and not broken["heatmap"] and not broken["verdict"]
    scores = {"good": [], "defect": []}
    for name, row in by_name.items():
        assert row["error"] == ""
        assert row["verdict"] in ("normal", "anomalous")
        assert (float(row["score"]) > float(row["threshold"])) == (row["verdict"] == "anomalous")
        heatmap = Path(row["heatmap"])
        assert heatmap.is_file() and heatmap.parent == out / "heatmaps"
        with Image.open(heatmap) as picture:
            assert picture.size == (64, 64) and picture.mode == "RGB"
        assert heatmap.with_name(heatmap.stem + "_mask.png").is_file()
        scores["good" if name.startswith("good_") else "defect"].append(float(row["score"]))
    assert sum(scores["defect"]) / len(scores["defect"]) > sum(scores["good"]) / len(scores["good"])
    assert len({row["threshold"] for row in rows}) == 1


@pytest.mark.slow
def test_an_interrupted_detect_keeps_the_rows_it_finished(trained, tmp_path, monkeypatch, capsys):
    data_root, checkpoints = trained
    images = sorted((data_root / "synthetic" / "test" / "good").iterdir())[:3]
    detect = AnomalyDetector.detect
    calls = []

    def interrupted_on_the_third(self, *args, **kwargs):  # Ctrl-C while the third image is being scored
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return detect(self, *args, **kwargs)

    monkeypatch.setattr(AnomalyDetector, "detect", interrupted_on_the_third)
    args = ["detect", *map(str, images), "--checkpoint", str(checkpoints / "synthetic" / "i3ad")]
    assert main([*args, "--out", str(tmp_path), "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert "interrupted: what was finished before is kept" in err and "Traceback" not in err
    with open(tmp_path / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["file"] for row in rows] == list(map(str, images[:2])) and all(row["score"] for row in rows)


@pytest.mark.slow
def test_detect_keeps_an_earlier_run_unless_told_to_replace_it(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    images = sorted((data_root / "synthetic" / "test" / "good").iterdir())
    out = tmp_path / "detections"
    args = ["--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--out", str(out), "--device", "cpu"]
    assert main(["detect", *map(str, images[:3]), *args]) == 0
    earlier = (out / "scores.csv").read_bytes()
    pictures = sorted(p.name for p in (out / "heatmaps").iterdir())
    assert len(pictures) == 3
    # A second run into the same folder would have lost the first one's rows and left its heat-maps unlisted.
    assert main(["detect", str(images[3]), *args]) == 2
    error = cli_error()
    assert "holds the scores.csv of an earlier run" in error and "--overwrite" in error
    assert (out / "scores.csv").read_bytes() == earlier
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == pictures
    # Replaced: only this run's pictures remain, beside what else the folder held.
    (out / "heatmaps" / "notes.png").write_bytes(b"not one of ours")
    assert main(["detect", str(images[3]), *args, "--overwrite"]) == 0
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["file"] for row in rows] == [str(images[3])]
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == sorted([Path(rows[0]["heatmap"]).name, "notes.png"])


@pytest.mark.slow
def test_detect_reports_a_link_to_nothing_in_a_folder(trained, tmp_path):
    data_root, checkpoints = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(next((data_root / "synthetic" / "test" / "good").iterdir()), inputs / "real.png")
    (inputs / "gone.png").symlink_to(tmp_path / "deleted.png")
    out = tmp_path / "detections"
    args = ["detect", str(inputs), "--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--out", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    with open(out / "scores.csv", newline="") as handle:
        rows = {Path(row["file"]).name: row for row in csv.DictReader(handle)}
    assert set(rows) == {"real.png", "gone.png"}
    assert rows["real.png"]["score"] and rows["gone.png"]["error"] and not rows["gone.png"]["score"]


@pytest.mark.slow
def test_detect_fails_when_no_image_is_readable(trained, tmp_path):
    _, checkpoints = trained
    broken = tmp_path / "broken.png"
    broken.write_text("nothing")
    args = ["detect", str(broken), "--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--device", "cpu"])
    assert exit_.value.code == 1
    assert (tmp_path / "scores.csv").is_file()


@pytest.mark.slow
def test_detect_leaves_out_what_it_wrote_before_hidden_files_and_refuses_a_missing_path(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    inputs = tmp_path / "inputs"
    shutil.copytree(data_root / "synthetic" / "test" / "good", inputs)
    count = len(list(inputs.iterdir()))
    # What archives and notebooks leave behind is not scored (macOS "._" files are no images at all).
    image = next(inputs.iterdir())
    for hidden in (inputs / ".hidden.png", inputs / "__MACOSX" / "._000.png", inputs / ".ipynb_checkpoints" / "a.png"):
        hidden.parent.mkdir(exist_ok=True)
        shutil.copy(image, hidden)
    # The output folder inside the input folder: a second run must not score the first one's heat-maps.
    args = ["detect", str(inputs), "--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--device", "cpu"]
    args += ["--out", str(inputs / "detections"), "--save-masks"]
    for again in ([], ["--overwrite"]):
        assert main([*args, *again]) == 0
        with open(inputs / "detections" / "scores.csv", newline="") as handle:
            assert len(list(csv.DictReader(handle))) == count
    # Nor an earlier run's heat-maps in another output folder (they were scored as images).
    assert main([*args[:-2], str(inputs / "detections2")]) == 0
    with open(inputs / "detections2" / "scores.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == count
    shutil.rmtree(inputs / "detections2")
    # The output folder the input folder itself: the images are scored, the heat-maps left out.
    shutil.rmtree(inputs / "detections")
    same = [*args[:-3], "--out", str(inputs)]
    for again in ([], ["--overwrite"]):
        assert main([*same, *again]) == 0
        with open(inputs / "scores.csv", newline="") as handle:
            assert len(list(csv.DictReader(handle))) == count
    missing = tmp_path / "missing.png"
    assert main([*args[:1], str(missing), *args[2:-3], "--out", str(tmp_path / "none")]) == 2
    assert f"{missing}: no such file or folder" in cli_error()
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_detect_notes_that_an_autoencoder_has_no_iterations(trained, tmp_path, capsys):
    data_root, checkpoints = trained
    image = next((data_root / "synthetic" / "test" / "good").iterdir())
    args = ["detect", str(image), "--checkpoint", str(checkpoints / "synthetic" / "ae"), "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path), "--iterations", "5"]) == 0
    assert "is an autoencoder: it has no iterations or tau, so those flags are ignored" in capsys.readouterr().err
    with open(tmp_path / "scores.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["iterations"] == "0" and row["ssim_threshold"] == ""


@pytest.mark.slow
def test_detect_notes_an_image_its_stretch_model_distorts(trained, tmp_path, capsys):
    data_root, checkpoints = trained
    image = next((data_root / "synthetic" / "test" / "good").iterdir())
    wide = tmp_path / "wide.png"
    with Image.open(image) as picture:
        picture.resize((200, 64)).save(wide)
    args = ["detect", str(image), str(wide), "--checkpoint", str(checkpoints / "synthetic" / "i3ad")]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "stretched" in line]
    assert notes == [
        f"note: {wide}: this 200x64 image is stretched 3.1-fold into the model's square frame; "
        "a model trained on square images may score it wrongly (cut it into square parts)"
    ]


@pytest.mark.slow
def test_detect_records_t_and_tau_and_notes_a_tau_other_than_the_calibrated_one(trained, tmp_path, capsys):
    data_root, checkpoints = trained
    image = next((data_root / "synthetic" / "test" / "good").iterdir())
    folder = checkpoints / "synthetic" / "i3ad"
    calibrated = load_checkpoint(folder).calibration.ssim_threshold
    args = ["detect", str(image), "--checkpoint", str(folder), "--device", "cpu", "--iterations", "2"]
    runs = {"calibrated": [], "other": ["--ssim-threshold", "0.1234"], "step 0": ["--iterations", "0"]}
    for label, extra in runs.items():
        assert main([*args, *extra, "--out", str(tmp_path / label)]) == 0
        noted = "verdicts are only indicative" in capsys.readouterr().err
        assert noted == (label == "other")
        with open(tmp_path / label / "scores.csv", newline="") as handle:
            (row,) = csv.DictReader(handle)
        assert row["score"] and not row["error"]
        assert (row["iterations"], row["ssim_threshold"]) == {
            "calibrated": ("2", f"{calibrated:.4f}"),
            "other": ("2", "0.1234"),
            "step 0": ("0", ""),  # step 0 uses no tau
        }[label]


def test_detect_gives_verdicts_at_a_score_threshold_of_ones_own(trained, tmp_path, capsys, cli_error):
    data_root, checkpoints = trained
    images = data_root / "synthetic" / "test" / "good"
    folder = checkpoints / "synthetic" / "i3ad"
    args = ["detect", str(images), "--checkpoint", str(folder), "--device", "cpu", "--iterations", "1"]
    assert main([*args, "--out", str(tmp_path / "own")]) == 0
    scores = pd.read_csv(tmp_path / "own" / "scores.csv")
    middle = float(scores["score"].median())
    # At the median score, the images above it are anomalous and the rest normal; no note about tau for the
    # user's own threshold, which is not the calibrated one's to judge.
    own = [*args, "--ssim-threshold", "0.1234", "--score-threshold", str(middle), "--out", str(tmp_path / "mine")]
    assert main(own) == 0
    assert "only indicative" not in capsys.readouterr().err
    mine = pd.read_csv(tmp_path / "mine" / "scores.csv")
    assert (mine["threshold"] == round(middle, 4)).all()
    assert ((mine["verdict"] == "anomalous") == (mine["score"] > middle)).all()
    for bad in ("nan", "inf"):
        assert main([*args, "--score-threshold", bad, "--out", str(tmp_path / "bad")]) == 2
        assert f"the score threshold must be a finite number, got {float(bad)}" in cli_error()
    assert not (tmp_path / "bad").exists()  # refused before anything was written


@pytest.mark.slow
def test_calibrate_refuses_a_quantile_outside_0_1_and_keeps_the_checkpoint(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    folder = tmp_path / "synthetic" / "i3ad"
    shutil.copytree(checkpoints / "synthetic" / "i3ad", folder)
    before = (folder / "detector.json").read_bytes()
    for quantile in ("1.5", "-0.1", "0"):
        args = ["calibrate", str(folder), "--data-root", str(data_root), "--ssim-quantile", quantile]
        assert main([*args, "--device", "cpu"]) == 2
        assert "the SSIM quantile for tau must lie strictly between 0 and 1" in cli_error()
    assert (folder / "detector.json").read_bytes() == before
    # An autoencoder has no iterations or step-0 cells: setting them is refused, not written into its card.
    ae = tmp_path / "synthetic" / "ae"
    shutil.copytree(checkpoints / "synthetic" / "ae", ae)
    flags = (["--iterations", "3"], ["--cell-size", "3"], ["--hidden-groups", "3"], ["--shrinking-masks"])
    for flag in (*flags, ["--last-painting-scores"]):
        assert main(["calibrate", str(ae), "--data-root", str(data_root), *flag, "--device", "cpu"]) == 2
        assert f"{ae} is an autoencoder: it has no iterations or step-0 masks to set" in cli_error()


def test_calibrate_checks_every_checkpoints_held_out_images_before_rewriting_any(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    first, second = tmp_path / "first" / "i3ad", tmp_path / "second" / "i3ad"
    for folder in (first, second):
        shutil.copytree(checkpoints / "synthetic" / "i3ad", folder)
    record = json.loads((second / "detector.json").read_text())
    record["info"]["holdout_files"][0] = "gone.png"  # a held-out image no longer in the data
    (second / "detector.json").write_text(json.dumps(record))
    before = (first / "detector.json").read_bytes()
    args = ["calibrate", str(first), str(second), "--data-root", str(data_root), "--iterations", "2"]
    assert main([*args, "--device", "cpu"]) == 2
    assert "'gone.png'" in cli_error()
    assert (first / "detector.json").read_bytes() == before


@pytest.mark.slow
def test_model_cards_take_metrics_only_from_rows_at_the_checkpoints_own_tau(trained, tmp_path, capsys):
    data_root, checkpoints = trained
    root = tmp_path / "ck"
    shutil.copytree(checkpoints / "synthetic" / "i3ad", root / "synthetic" / "i3ad")
    results = tmp_path / "results.csv"
    args = ["evaluate", "--data-root", str(data_root), "--checkpoints", str(root), "--iterations", "1"]
    assert main([*args, "--thresholds", "0.5", "--device", "cpu", "--out", str(results)]) == 0
    assert main(["report", "--results", str(results), "--update-cards", str(root)]) == 0
    folder = root / "synthetic" / "i3ad"
    assert "model card metrics updated" in capsys.readouterr().out
    assert "image_auroc" in load_checkpoint(folder).info["metrics"]
    # Re-calibrated to another tau: the table's rows no longer describe it, so its card is left alone.
    recalibrate = ["calibrate", str(folder), "--data-root", str(data_root), "--ssim-quantile", "0.3"]
    assert main([*recalibrate, "--device", "cpu"]) == 0
    card = (folder / "detector.json").read_bytes()
    assert main(["report", "--results", str(results), "--update-cards", str(root)]) == 0
    assert "was re-calibrated" in capsys.readouterr().err
    assert (folder / "detector.json").read_bytes() == card


@pytest.mark.slow
def test_calibrate_repairs_a_checkpoint_that_detect_refuses(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    folder = tmp_path / "synthetic" / "i3ad"
    shutil.copytree(checkpoints / "synthetic" / "i3ad", folder)
    record = json.loads((folder / "detector.json").read_text())
    record["calibration"]["score_thresholds"] = record["calibration"]["score_thresholds"][:1]
    (folder / "detector.json").write_text(json.dumps(record))
    image = next((data_root / "synthetic" / "test" / "good").iterdir())
    detect = ["detect", str(image), "--checkpoint", str(folder), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(detect) == 2
    assert f"run `python -m i3ad calibrate {folder}`" in cli_error()
    assert main(["calibrate", str(folder), "--data-root", str(data_root), "--device", "cpu"]) == 0
    assert len(load_checkpoint(folder).calibration.score_thresholds) == MAX_CALIBRATED_ITERATIONS + 1
    assert main([*detect, "--overwrite"]) == 0
    # A detection tau set by hand: calibrated at that tau, which no quantile produced, so none is recorded.
    record = json.loads((folder / "detector.json").read_text())
    record["detection"]["ssim_threshold"] = 0.9
    (folder / "detector.json").write_text(json.dumps(record))
    assert main([*detect, "--overwrite"]) == 2
    assert "is not the calibrated tau" in cli_error()
    assert main(["calibrate", str(folder), "--data-root", str(data_root), "--device", "cpu"]) == 0
    calibration = load_checkpoint(folder).calibration
    assert calibration.ssim_threshold == 0.9 and calibration.ssim_quantile is None


@pytest.mark.slow
def test_calibrate_command_reuses_the_holdout(trained, tmp_path):
    data_root, checkpoints = trained
    folder = tmp_path / "synthetic" / "i3ad"
    shutil.copytree(checkpoints / "synthetic" / "i3ad", folder)
    before = load_checkpoint(folder)
    before.info["metrics"] = {"image_auroc": 0.9, "source": "a table at T = 1"}
    save_record(before, folder)
    assert main(["calibrate", str(folder), "--data-root", str(data_root), "--iterations", "3", "--device", "cpu"]) == 0
    after = load_checkpoint(folder)
    assert after.settings.iterations == 3
    # Metrics of the old defaults are not shown as the new ones' (the card says "Not evaluated yet").
    assert "metrics" not in after.info and "Not evaluated yet." in (folder / "README.md").read_text()
    assert after.settings.ssim_threshold == before.settings.ssim_threshold
    # Same tau, same held-out images: the same thresholds come out again.
    assert after.calibration.score_thresholds == pytest.approx(before.calibration.score_thresholds, rel=1e-4)
    assert (folder / "model.safetensors").read_bytes() == (
        checkpoints / "synthetic" / "i3ad" / "model.safetensors"
    ).read_bytes()


def test_calibrate_sets_the_iteration_rule_and_keeps_tau(trained, tmp_path):
    data_root, checkpoints = trained
    folder = tmp_path / "synthetic" / "i3ad"
    shutil.copytree(checkpoints / "synthetic" / "i3ad", folder)
    before = load_checkpoint(folder)
    args = ["calibrate", str(folder), "--data-root", str(data_root), "--device", "cpu"]
    assert main([*args, "--shrinking-masks", "--iteration-painting", "cells"]) == 0
    after = load_checkpoint(folder)
    assert after.settings.shrinking_masks and after.settings.iteration_painting == "cells"
    card = (folder / "README.md").read_text()
    assert "mask is cut to the last step's pixels" in card and "re-paints its mask in step 0's grid cells" in card
    # Step 0 and so tau stay; the thresholds after it come from the new iterations.
    assert after.settings.ssim_threshold == before.settings.ssim_threshold
    assert after.calibration.score_thresholds[0] == pytest.approx(before.calibration.score_thresholds[0], rel=1e-4)
    assert after.calibration.score_thresholds[2:] != pytest.approx(before.calibration.score_thresholds[2:], rel=1e-4)
    # Last-painting scores change the maps after step 0, and so the thresholds, but not the masks or tau.
    assert main([*args, "--last-painting-scores"]) == 0
    scored = load_checkpoint(folder)
    assert scored.settings == after.settings.with_(last_painting_scores=True)
    assert "compares each pixel with the last reconstruction that re-painted it" in (folder / "README.md").read_text()
    assert scored.calibration.score_thresholds[0] == pytest.approx(after.calibration.score_thresholds[0], rel=1e-4)
    assert scored.calibration.score_thresholds[2:] != pytest.approx(after.calibration.score_thresholds[2:], rel=1e-4)
    assert main([*args, "--no-shrinking-masks", "--iteration-painting", "hole", "--no-last-painting-scores"]) == 0
    restored = load_checkpoint(folder)
    assert restored.settings == before.settings
    assert restored.calibration.score_thresholds == pytest.approx(before.calibration.score_thresholds, rel=1e-4)


@pytest.mark.slow
def test_calibrate_sets_the_step0_density_and_recalibrates_tau(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    folder = tmp_path / "synthetic" / "i3ad"
    shutil.copytree(checkpoints / "synthetic" / "i3ad", folder)
    before = load_checkpoint(folder)
    args = ["calibrate", str(folder), "--data-root", str(data_root), "--device", "cpu", "--hidden-groups"]
    assert main([*args, "4"]) == 2  # of K = 4 groups one must stay visible
    assert "each step-0 mask hides 1 to 3 of the 4 grid groups" in cli_error()
    assert main([*args, "3"]) == 0
    after = load_checkpoint(folder)
    assert after.settings.step0_hidden_groups == 3
    # tau is found again at the checkpoint's own quantile: a denser step 0 paints differently.
    assert after.calibration.ssim_quantile == before.calibration.ssim_quantile
    assert after.settings.ssim_threshold != before.settings.ssim_threshold
    out = tmp_path / "dense.csv"
    evaluate = ["evaluate", "--data-root", str(data_root), "--checkpoints", str(tmp_path), "--model", "i3ad"]
    assert main([*evaluate, "--iterations", "1", "--thresholds", "0.5", "--device", "cpu", "--out", str(out)]) == 0
    assert (pd.read_csv(out)["step0_hidden_groups"] == 3).all()


@pytest.mark.slow
def test_bench_command_prints_and_appends_its_table(trained, tmp_path, capsys):
    data_root, checkpoints = trained
    out = tmp_path / "perf.csv"
    common = ["bench", "--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--data-root", str(data_root)]
    common += ["--batch-sizes", "2", "--iterations", "0", "1", "--repeats", "1", "--device", "cpu", "--out", str(out)]
    assert main(common) == 0
    assert main([*common, "--channels-last", "--append"]) == 0
    assert "network forward" in capsys.readouterr().out
    # A table already there is neither replaced nor added to unless asked, before anything is timed.
    before = out.read_bytes()
    assert main(common) == 2
    assert f"--out {out} already exists: add --overwrite to replace it or --append" in capsys.readouterr().err
    assert out.read_bytes() == before
    with pytest.raises(SystemExit) as exit_:  # one or the other
        main([*common, "--append", "--overwrite"])
    assert exit_.value.code == 2 and "not allowed with argument --append" in capsys.readouterr().err
    # Nor is a file that bench did not write added to: it is named, before anything is timed.
    other = tmp_path / "other.csv"
    for text in ("a,b\n1,2\n", "", "\xff\xfe,\n"):
        other.write_text(text, encoding="latin-1")
        assert main([*common[:-1], str(other), "--append"]) == 2
        assert f"--append: {other} is not a table of `python -m i3ad bench`" in capsys.readouterr().err
        assert other.read_text(encoding="latin-1") == text
    table = pd.read_csv(out)
    # A model loaded on the CPU is already channels-last (models.for_device); the flag keeps it so.
    assert table["memory_format"].tolist() == ["channels_last"] * 6
    assert (table["compile"] == "eager").all()
    detection = table[table["task"] == "detection"]
    # Step 0 paints each image once per complementary mask (4); T = 1 adds at most one more painting.
    assert detection.loc[detection["iterations"] == 0, "forwards_per_image"].tolist() == [4.0, 4.0]
    assert (detection.loc[detection["iterations"] == 1, "forwards_per_image"] <= 5.0).all()
    assert (table["images_per_s"] > 0).all() and (table["gflop_per_image"] > 0).all()
    assert not table["tf32_convolutions"].any()  # only CUDA convolutions use TF32
    assert not table["cudnn_benchmark"].any()


def test_bench_appends_to_a_table_written_before_a_column_existed(trained, tmp_path, monkeypatch):
    _, checkpoints = trained
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # restored after the test
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    out = tmp_path / "perf.csv"
    pd.DataFrame({"device": ["earlier GPU"], "images_per_s": [100.0], "retired": ["x"]}).to_csv(out, index=False)
    args = ["bench", "--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--batch-sizes", "1", "--iterations"]
    args += ["0", "--repeats", "1", "--device", "cpu", "--no-tf32", "--cudnn-benchmark", "--out", str(out), "--append"]
    assert main(args) == 0
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cudnn.benchmark  # the flags held for the run only
    table = pd.read_csv(out)
    assert table.loc[0, "device"] == "earlier GPU" and table.loc[0, "images_per_s"] == 100
    assert pd.isna(table.loc[0, "tf32_convolutions"]) and pd.isna(table.loc[0, "cudnn_benchmark"])
    assert len(table) > 1 and table["task"].iloc[1:].notna().all()
    # Today's columns in today's order, then those only the older rows have.
    first = ["device", "threads", "model", "compile", "memory_format", "tf32_convolutions", "cudnn_benchmark"]
    assert table.columns[:7].tolist() == first
    assert table.columns[-1] == "retired"


def test_bench_with_no_iterations_times_the_network_only(trained, tmp_path):
    _, checkpoints = trained
    out = tmp_path / "perf.csv"
    args = ["bench", "--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--batch-sizes", "1", "2"]
    args += ["--iterations", "--repeats", "1", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    table = pd.read_csv(out)
    assert table["task"].tolist() == ["network forward"] * 2 and table["batch"].tolist() == [1, 2]


def test_bench_saves_the_evaluation_sweep_with_the_rest(trained, tmp_path):
    _, checkpoints = trained
    out = tmp_path / "perf.csv"
    args = ["bench", "--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--batch-sizes", "1", "--iterations"]
    args += ["--sweep-images", "2", "--repeats", "1", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    table = pd.read_csv(out)
    assert table["task"].tolist() == ["network forward", "evaluation sweep T=0..10, 2 images"]
    assert table["images_per_s"].iloc[1] > 0


def test_bench_stopped_early_keeps_the_batch_sizes_it_measured(trained, tmp_path, monkeypatch):
    _, checkpoints = trained
    out = tmp_path / "perf.csv"
    pd.DataFrame({"device": ["earlier run"], "images_per_s": [100.0]}).to_csv(out, index=False)
    timed = []

    def interrupted_at_the_third_timing(run, device, repeats, warmup=2):
        timed.append(run)
        if len(timed) == 3:  # the network forwards of the second batch size, after both timings of the first
            raise KeyboardInterrupt
        return 0.01

    monkeypatch.setattr("i3ad.benchmark.median_seconds", interrupted_at_the_third_timing)
    args = ["bench", "--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--batch-sizes", "1", "2"]
    args += ["--iterations", "0", "--repeats", "1", "--device", "cpu", "--out", str(out), "--append"]
    assert main(args) == 130
    table = pd.read_csv(out)
    assert table["device"].iloc[0] == "earlier run"
    assert table["task"].iloc[1:].tolist() == ["network forward", "detection"] and (table["batch"].iloc[1:] == 1).all()


def test_bench_profiles_the_convolutions_of_the_network_forwards(trained, tmp_path):
    _, checkpoints = trained
    detector = load_checkpoint(checkpoints / "synthetic" / "i3ad")
    common = {"batch_sizes": [2], "iterations": [0], "precisions": ["fp32"], "repeats": 2}
    table = run_benchmark(detector, torch.rand(2, 3, 64, 64), profile_convolutions=True, **common)
    forward, detection = table.iloc[0], table.iloc[1]
    # Most of this network's time is its convolutions (profiled against the wall time of the same calls).
    assert 0.3 < forward["convolution_share"] < 1
    assert 0 < forward["convolution_tflops"] < math.inf
    assert math.isnan(detection["convolution_share"])  # profiled: the network's forwards only
    assert "convolution_share" not in run_benchmark(detector, torch.rand(2, 3, 64, 64), **common)
    out = tmp_path / "perf.csv"
    args = ["bench", "--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--batch-sizes", "1", "--iterations"]
    assert main([*args, "--repeats", "1", "--profile-convolutions", "--device", "cpu", "--out", str(out)]) == 0
    assert 0 < pd.read_csv(out)["convolution_share"].item() < 1
    # No convolution seen (as under a CUDA graph's replay): unknown, not a division by zero.
    in_convolutions, profiled = convolution_time(lambda: torch.ones(8) + 1, torch.device("cpu"), repeats=2)
    assert math.isnan(in_convolutions) and profiled > 0


@pytest.mark.slow
def test_bench_records_the_memory_format_it_ran_in(trained):
    _, checkpoints = trained
    detector = load_checkpoint(checkpoints / "synthetic" / "i3ad")
    detector.model = detector.model.to(memory_format=torch.contiguous_format)
    images = torch.rand(2, 3, 64, 64)
    common = {"batch_sizes": [1], "iterations": [0], "precisions": ["fp32"], "repeats": 1}
    assert set(run_benchmark(detector, images, **common)["memory_format"]) == {"contiguous"}
    assert set(run_benchmark(detector, images, channels_last=True, **common)["memory_format"]) == {"channels_last"}


@pytest.mark.slow
def test_bench_compiles_the_network_afresh_for_each_precision(trained, monkeypatch):
    # One compiled model shared by two precisions recompiles on the autocast switch until dynamo gives up and runs
    # it eagerly, so each precision gets its own compilation after a reset of dynamo's caches.
    _, checkpoints = trained
    detector = load_checkpoint(checkpoints / "synthetic" / "i3ad")
    compiled, resets = [], []
    monkeypatch.setattr(torch, "compile", lambda model, mode, dynamic: compiled.append((model, mode, dynamic)) or model)
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(True))
    common = {"batch_sizes": [1], "iterations": [0], "repeats": 1, "compile_mode": "default"}
    table = run_benchmark(detector, torch.rand(1, 3, 64, 64), precisions=["fp32", "bf16", "fp16"], **common)
    assert compiled == [(detector.model, "default", None)] * 3 and len(resets) == 3
    assert set(table["compile"]) == {"default"} and set(table["precision"]) == {"fp32", "bf16", "fp16"}
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose one of fp32, bf16, fp16"):
        run_benchmark(detector, torch.rand(1, 3, 64, 64), precisions=["fp32", "fp8"], **common)
    assert len(resets) == 3  # refused before anything was timed
    # --static-shapes: one graph per shape, recorded in the table.
    table = run_benchmark(detector, torch.rand(1, 3, 64, 64), precisions=["fp32"], static_shapes=True, **common)
    assert compiled[-1] == (detector.model, "default", False) and set(table["compile"]) == {"default static"}
    with pytest.raises(ValueError, match="compiled network"):
        run_benchmark(
            detector,
            torch.rand(1, 3, 64, 64),
            precisions=["fp32"],
            static_shapes=True,
            **common | {"compile_mode": None},
        )


@pytest.mark.slow
def test_evaluate_errors_with_checkpoints(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    common = ["evaluate", "--checkpoints", str(checkpoints), "--device", "cpu", "--out", str(tmp_path / "r.csv")]
    assert main([*common, "--data-root", str(tmp_path / "no-data")]) == 2
    assert "not found" in cli_error()
    assert main([*common, "--data-root", str(data_root), "--category", "other"]) == 2
    err = cli_error()
    assert "no checkpoint for category 'other'" in err and "synthetic" in err
    assert not (tmp_path / "r.csv").exists()
    # A results table already there is kept, and said so before anything is loaded or computed.
    (tmp_path / "r.csv").write_text("finished,table\n1,2\n")
    assert main([*common, "--data-root", str(data_root)]) == 2
    assert "r.csv already exists: add --overwrite to replace it, or give another file" in cli_error()
    assert (tmp_path / "r.csv").read_text() == "finished,table\n1,2\n"
    assert main([*common, "--data-root", str(data_root), "--iterations", "0", "--overwrite"]) == 0
    assert "image_auroc" in (tmp_path / "r.csv").read_text()


def _copy_data(data_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(data_root / "synthetic", copy / "synthetic")
    return copy


@pytest.mark.slow
def test_evaluate_checks_every_category_model_and_the_output_before_computing(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    common = ["evaluate", "--data-root", str(data_root), "--checkpoints", str(checkpoints), "--device", "cpu"]
    assert main([*common, "--model", "i3ad_small", "--out", str(tmp_path / "r.csv")]) == 2
    assert f"no checkpoint named 'i3ad_small' for synthetic under {checkpoints}" in cli_error()
    # A typo next to a valid name is refused too, not silently left out.
    assert main([*common, "--model", "i3ad", "ea", "--out", str(tmp_path / "r.csv")]) == 2
    assert f"no checkpoint named 'ea' for synthetic under {checkpoints}" in cli_error()
    assert main([*common, "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder" in cli_error()
    assert not (tmp_path / "r.csv").exists()
    # A data root without the checkpoints' categories: the message says where "all" took them from.
    (tmp_path / "other_data").mkdir()
    common[2] = str(tmp_path / "other_data")
    assert main([*common, "--out", str(tmp_path / "r.csv")]) == 2
    assert "the default --category all takes every category of --checkpoints" in cli_error()


@pytest.mark.slow
def test_evaluate_on_a_test_set_without_defects_keeps_its_rows(trained, tmp_path, capsys):
    data_root, checkpoints = trained
    copy = _copy_data(data_root, tmp_path)
    for folder in (copy / "synthetic" / "test").iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)
    shutil.rmtree(copy / "synthetic" / "ground_truth")
    common = ["evaluate", "--data-root", str(copy), "--checkpoints", str(checkpoints), "--device", "cpu"]
    assert main([*common, "--iterations", "1", "--out", str(tmp_path / "r.csv")]) == 0
    assert "no image AUROC (the test set holds normal or anomalous images only)" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "r.csv")["image_auroc"].isna().all()
    assert main([*common, "--by-defect", "--out", str(tmp_path / "d.csv")]) == 0
    by_defect = pd.read_csv(tmp_path / "d.csv")  # only the normal images' row: how many of them are false alarms
    assert (by_defect["defect"] == "good").all() and sorted(by_defect["model"]) == ["ae", "i3ad"]
    assert by_defect["image_auroc"].isna().all() and by_defect["flagged_share"].between(0, 1).all()


@pytest.mark.slow
def test_checkpoints_find_their_held_out_images_by_name(trained, tmp_path, capsys):
    data_root, checkpoints = trained
    record = json.loads((checkpoints / "synthetic" / "i3ad" / "detector.json").read_text())
    held_out = record["info"]["holdout_files"]
    assert len(held_out) == record["calibration"]["holdout_images"] == 6
    copy = _copy_data(data_root, tmp_path)
    train = copy / "synthetic" / "train" / "good"
    # A training image less changes nothing: the held-out ones are found by name.
    next(p for p in sorted(train.iterdir()) if p.name not in held_out).unlink()
    common = ["evaluate", "--data-root", str(copy), "--checkpoints", str(checkpoints), "--model", "i3ad"]
    common += ["--iterations", "0", "--device", "cpu", "--out", str(tmp_path / "r.csv")]
    assert main(common) == 0
    assert pd.read_csv(tmp_path / "r.csv")["normal_error_subtracted"].any()
    # Without a held-out image there is no normal error to measure; the raw rows still come out.
    (train / held_out[0]).unlink()
    assert main([*common, "--overwrite"]) == 0
    assert "no normal-error rows" in capsys.readouterr().out
    assert not pd.read_csv(tmp_path / "r.csv")["normal_error_subtracted"].any()
    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoints / "synthetic" / "i3ad", folder)
    assert main(["calibrate", str(folder), "--data-root", str(copy), "--device", "cpu"]) == 2
    expected = f"lacks 1 of the 6 images synthetic/checkpoint was calibrated on (e.g. {held_out[0]!r})"
    assert expected in capsys.readouterr().err


@pytest.mark.slow
def test_a_checkpoint_that_records_only_its_split_refuses_a_train_folder_of_another_size(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    folder = tmp_path / "ck" / "synthetic" / "i3ad"
    shutil.copytree(checkpoints / "synthetic" / "i3ad", folder)
    record = json.loads((folder / "detector.json").read_text())
    del record["info"]["holdout_files"]  # as written before the names were recorded
    (folder / "detector.json").write_text(json.dumps(record))
    copy = _copy_data(data_root, tmp_path)
    sorted((copy / "synthetic" / "train" / "good").iterdir())[0].unlink()
    assert main(["calibrate", str(folder), "--data-root", str(copy), "--device", "cpu"]) == 2
    assert "was split over 60 images of train/good" in cli_error()


def test_iteration_counts_beyond_the_calibrated_ones_are_refused(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    folder = checkpoints / "synthetic" / "i3ad"
    assert main(["calibrate", str(folder), "--data-root", str(data_root), "--iterations", "12"]) == 2
    assert "iterations must be between 0 and 10" in cli_error()
    assert main([*_train(data_root, "synthetic", tmp_path / "ck"), "--iterations", "11"]) == 2
    assert "iterations must be between 0 and 10" in cli_error()
    assert not (tmp_path / "ck").exists()


def test_bench_refuses_an_autoencoder(trained, cli_error):
    _, checkpoints = trained
    assert main(["bench", "--checkpoint", str(checkpoints / "synthetic" / "ae"), "--device", "cpu"]) == 2
    assert "is an autoencoder, give an I3AD one" in cli_error()


def test_bench_on_a_category_without_test_images_is_a_clear_error(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    copy = _copy_data(data_root, tmp_path)
    shutil.rmtree(copy / "synthetic" / "test")
    shutil.rmtree(copy / "synthetic" / "ground_truth", ignore_errors=True)
    args = ["bench", "--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--data-root", str(copy)]
    assert main([*args, "--device", "cpu", "--batch-sizes", "1", "--iterations", "0", "--repeats", "1"]) == 2
    assert "holds no test images to time the detection on" in cli_error()


def test_train_refuses_a_category_too_small_to_hold_images_out_before_training(tmp_path, cli_error):
    make_synthetic_category(tmp_path / "data", "single", train=1, test_good=1, test_per_defect=1)
    assert main([*_train(tmp_path / "data", "single", tmp_path / "ck"), "--steps", "1"]) == 2
    assert "1 image(s) in train/good at holdout fraction 0.1 leave 0 held out" in cli_error()
    # One held-out image is not enough when each is scored against the others' normal error.
    make_synthetic_category(tmp_path / "data", "few", train=6, test_good=1, test_per_defect=1)
    assert main([*_train(tmp_path / "data", "few", tmp_path / "ck"), "--steps", "1"]) == 2
    assert (
        "6 image(s) in train/good at holdout fraction 0.1 leave 1 held out to calibrate on, and calibration needs 2"
        in (cli_error())
    )
    assert not (tmp_path / "ck").exists()
    # Named after a category that can be trained, the small one is still found before the first one trains.
    make_synthetic_category(tmp_path / "data", "a_large", train=20, test_good=1, test_per_defect=1)
    args = _train(tmp_path / "data", "a_large", tmp_path / "ck")
    args[args.index("--category") + 1 : args.index("--category") + 2] = ["a_large", "few"]
    assert main([*args, "--steps", "1"]) == 2
    assert "few: 6 image(s) in train/good" in cli_error()
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("device", ["gpu", "mps", "cuda:x"])
def test_a_device_name_i3ad_does_not_run_on_is_a_clear_error(synthetic_root, tmp_path, device, cli_error):
    data_root, _ = synthetic_root
    args = [*_train(data_root, "synthetic", tmp_path / "ck"), "--steps", "1"]
    args[args.index("--device") + 1] = device
    assert main(args) == 2
    assert f"device {device!r} is not one i3ad runs on; use auto, cpu, cuda or cuda:N" in cli_error()


def test_synth_command(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--category", "tiny", "--size", "32", "--greyscale"]) == 0
    assert "tiny" in capsys.readouterr().out
    index = index_category(tmp_path, "tiny")
    assert index.greyscale and index.has_masks
    assert len(index.train) == 60 and len(index.test) == 28
    with Image.open(index.test[0].image) as image:
        assert image.size == (32, 32) and image.mode == "L"
    # The command writes what the library function writes.
    reference = make_synthetic_category(tmp_path / "ref", "tiny", size=32, channels=1)
    for path in sorted(reference.rglob("*.png"))[:20]:
        assert path.read_bytes() == (tmp_path / "tiny" / path.relative_to(reference)).read_bytes()
    # Images too small for the reader are refused before any is written.
    assert main(["synth", "--out", str(tmp_path / "small"), "--size", "4"]) == 2
    assert "synthetic images must be 8 to 2048 px a side, got 4" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "huge"), "--size", "100000"]) == 2
    assert "synthetic images must be 8 to 2048 px a side, got 100000" in capsys.readouterr().err
    for category in ("../escaped", ""):
        assert main(["synth", "--out", str(tmp_path / "named"), "--category", category]) == 2
        assert "is not a valid name" in capsys.readouterr().err
    assert not (tmp_path / "small").exists() and not (tmp_path / "huge").exists()
    assert not (tmp_path / "named").exists() and not (tmp_path / "escaped").exists()
    # An existing category is left as it is: some of its images would have been replaced, the rest mixed in.
    before = {path: path.read_bytes() for path in (tmp_path / "tiny").rglob("*.png")}
    assert main(["synth", "--out", str(tmp_path), "--category", "tiny", "--seed", "5"]) == 2
    assert f"{tmp_path / 'tiny'} already exists" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "seeded"), "--seed", "-1"]) == 2
    assert "the seed must be a whole number >= 0, got -1" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in (tmp_path / "tiny").rglob("*.png")} == before


# --- errors ----------------------------------------------------------------------------------------------------------


def _train(data_root, category: str, out: Path) -> list[str]:
    return ["train", "--data-root", str(data_root), "--category", category, "--out", str(out), "--device", "cpu"]


def test_train_with_a_wrong_data_root(tmp_path, cli_error):
    assert main([*_train(tmp_path / "missing", "synthetic", tmp_path / "ck"), "--steps", "1"]) == 2
    err = cli_error()
    assert "synthetic" in err and str(tmp_path / "missing") in err
    assert not (tmp_path / "ck").exists()


def test_an_interrupted_train_leaves_no_empty_checkpoint_folder(synthetic_root, tmp_path, monkeypatch, capsys):
    data_root, _ = synthetic_root
    kept = tmp_path / "ck" / "other" / "i3ad"  # a checkpoint root that already holds something
    kept.mkdir(parents=True)
    (kept / "detector.json").write_text("{}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("i3ad.pipeline.train", interrupted)
    assert main([*_train(data_root, "synthetic", tmp_path / "ck"), "--steps", "1"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "ck" / "synthetic").exists()  # created for the run, removed with its empty category folder
    assert (kept / "detector.json").exists()
    assert main([*_train(data_root, "synthetic", tmp_path / "fresh"), "--steps", "1"]) == 130
    assert not (tmp_path / "fresh").exists()


def test_train_refuses_to_replace_a_checkpoint_unless_told_to(trained, tmp_path, monkeypatch, cli_error):
    data_root, checkpoints = trained
    root = tmp_path / "ck"
    shutil.copytree(checkpoints, root)
    weights = root / "synthetic" / "i3ad" / "model.safetensors"
    before = weights.read_bytes()

    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("i3ad.pipeline.train", never)
    tiny = [*_train(data_root, "synthetic", root), *SMALL, "--steps", "1"]
    assert main(tiny) == 2  # refused before any training
    err = cli_error()
    assert str(root / "synthetic" / "i3ad") in err and "--overwrite" in err
    assert weights.read_bytes() == before
    monkeypatch.undo()
    assert main([*tiny, "--quiet", "--overwrite"]) == 0
    assert weights.read_bytes() != before


def test_train_with_an_unknown_category(synthetic_root, tmp_path, cli_error):
    data_root, _ = synthetic_root
    assert main([*_train(data_root, "nosuch", tmp_path / "ck"), "--steps", "1"]) == 2
    err = cli_error()
    assert "'nosuch' not found" in err and "found: synthetic" in err
    # Named after one that exists, it is found missing before that one trains, not after.
    args = [*_train(data_root, "synthetic", tmp_path / "ck"), "--category", "synthetic", "nosuch", "--steps", "1"]
    assert main(args) == 2
    assert "'nosuch' not found" in cli_error()
    assert not (tmp_path / "ck").exists()
    # Named twice, a category trains once (the second pass refused the checkpoint the first had written).
    args = [*_train(data_root, "synthetic", tmp_path / "ck"), "--category", "synthetic", "synthetic"]
    assert main([*args, "--steps", "1", "--quiet"]) == 0


@pytest.mark.parametrize("category", ["../synthetic", "a/b", ".."])
def test_train_with_an_unsafe_category(synthetic_root, tmp_path, category, cli_error):
    data_root, _ = synthetic_root
    assert main([*_train(data_root, category, tmp_path / "ck"), "--steps", "1"]) == 2
    assert "not a valid name" in cli_error()


def test_train_with_bad_settings(synthetic_root, tmp_path, cli_error):
    data_root, _ = synthetic_root
    assert main([*_train(data_root, "synthetic", tmp_path / "ck"), "--augment", "twirl"]) == 2
    assert "twirl" in cli_error()
    assert main([*_train(data_root, "synthetic", tmp_path / "ck"), "--steps", "0"]) == 2
    assert "steps" in cli_error()
    assert main([*_train(data_root, "synthetic", tmp_path / "ck"), "--grid-cell-sizes", "8", "0"]) == 2
    assert "grid cell sizes" in cli_error()
    assert main([*_train(data_root, "synthetic", tmp_path / "ck"), "--batch-size", "0"]) == 2
    assert "the batch size must be >= 1, got 0" in cli_error()
    for flag, value, message in [
        ("--base-width", "0", "base_width must be a whole number >= 1, got 0"),
        ("--patch-size", "0", "patch_size must be a whole number >= 1, got 0"),
        ("--full-res-width", "-1", "full_res_width must be a whole number >= 1, got -1"),
        (
            "--full-res-width",
            "8",
            "a full-resolution path (full_res_width) needs a folded first level (patch_size > 1)",
        ),
        ("--width-multipliers", "0", "width multiplier 1 must be a whole number >= 1, got 0"),
        ("--image-size", "100000", "the image size (frame side) must lie between 16 and 4096 px, got 100000"),
    ]:
        assert main([*_train(data_root, "synthetic", tmp_path / "ck"), flag, value]) == 2
        assert message in cli_error()
    for name in ("../evil", "a/b", "."):  # the checkpoint would land outside <category>/<name>/
        assert main([*_train(data_root, "synthetic", tmp_path / "ck"), "--name", name]) == 2
        assert f"model name (--name) {name!r} is not a valid name" in cli_error()
    for minutes in ("0", "-1", "inf", "nan"):  # inf passed, then ended the training at step 70 in an OverflowError
        assert main([*_train(data_root, "synthetic", tmp_path / "ck"), "--max-minutes", minutes]) == 2
        assert f"the time budget must be a finite number of minutes above 0, got {float(minutes)}" in cli_error()
    ae = [*_train(data_root, "synthetic", tmp_path / "ck"), "--model", "ae"]
    assert main([*ae, "--latent-dim", "0"]) == 2
    assert "latent_dim must be a whole number >= 1, got 0" in cli_error()
    assert main([*ae, "--image-size", "48"]) == 2
    assert "image_size must be a power of two >= 32, got 48" in cli_error()
    for quantile in ("1.5", "-0.01"):
        assert main([*_train(data_root, "synthetic", tmp_path / "ck"), "--ssim-quantile", quantile]) == 2
        message = f"strictly between 0 and 1, got {float(quantile)} (or 0 to keep --ssim-threshold)"
        assert message in cli_error()
    assert not (tmp_path / "ck").exists()  # refused before training


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a folder nobody can write to")
def test_outputs_that_cannot_be_written_are_refused_before_any_work(trained, tmp_path, cli_error):
    data_root, checkpoints = trained
    assert main(_train(data_root, "synthetic", Path("/proc"))) == 2
    assert "cannot write to /proc/synthetic" in cli_error()
    common = ["evaluate", "--data-root", str(data_root), "--checkpoints", str(checkpoints), "--device", "cpu"]
    assert main([*common, "--out", "/proc/results.csv"]) == 2
    assert "--out /proc/results.csv: cannot write to /proc" in cli_error()
    image = next((data_root / "synthetic" / "test" / "good").iterdir())
    args = ["detect", str(image), "--checkpoint", str(checkpoints / "synthetic" / "i3ad"), "--out", "/proc/detections"]
    assert main([*args, "--device", "cpu"]) == 2
    assert "--out /proc/detections: cannot write to /proc/detections/heatmaps" in cli_error()


def test_evaluate_and_bench_check_their_values_before_loading(tmp_path, cli_error):
    # Nothing to load exists: a value checked late would be reported as the missing data or checkpoint instead.
    out = tmp_path / "results" / "r.csv"
    common = ["evaluate", "--data-root", str(tmp_path / "no_data"), "--checkpoints", str(tmp_path / "no_ck")]
    common += ["--device", "cpu", "--out", str(out)]
    for flag, value, message in [
        ("--thresholds", "1.5", "the SSIM threshold tau must be a number from -1 to 1, got 1.5"),
        ("--cell-sizes", "0", "the step-0 cell size must be a whole number >= 1 px, got 0"),
        ("--sigmas", "-1", "the smoothing sigma must be a finite number >= 0, got -1.0"),
        ("--sigmas", "inf", "the smoothing sigma must be a finite number >= 0, got inf"),
        ("--sigmas", "nan", "the smoothing sigma must be a finite number >= 0, got nan"),
        ("--iterations", "-1", "iterations must lie between 0 and 100, got -1"),
        ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ]:
        assert main([*common, flag, value]) == 2
        assert message in cli_error()
    assert not out.parent.exists()
    bench = ["bench", "--checkpoint", str(tmp_path / "no_ck"), "--device", "cpu"]
    for flag, value, message in [
        ("--batch-sizes", "0", "batch sizes must be >= 1, got [0]"),
        ("--repeats", "0", "repeats must be >= 1, got 0"),
        ("--iterations", "11", "iterations must be between 0 and 10 (the score thresholds are calibrated up to there)"),
        ("--threads", "-2", "--threads must be >= 1, got -2"),
        ("--sweep-images", "-1", "the evaluation sweep needs >= 0 images (0: no sweep), got -1"),
        ("--out", str(tmp_path), f"--out {tmp_path} is a folder"),
    ]:
        assert main([*bench, flag, value]) == 2
        assert message in cli_error()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_train_on_a_missing_gpu(synthetic_root, tmp_path, cli_error):
    data_root, _ = synthetic_root
    args = [*_train(data_root, "synthetic", tmp_path / "ck"), "--steps", "1"]
    args[args.index("--device") + 1] = "cuda"
    assert main(args) == 2
    assert "no CUDA GPU" in cli_error()


def test_detect_with_a_missing_checkpoint_folder(synthetic_root, tmp_path, cli_error):
    _, folder = synthetic_root
    args = ["detect", str(folder / "test" / "good"), "--checkpoint", str(tmp_path / "nothing" / "i3ad")]
    assert main([*args, "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = cli_error()
    assert "does not exist" in err and str(tmp_path / "nothing" / "i3ad") in err


def test_detect_with_a_broken_checkpoint(tmp_path, cli_error):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "detector.json").write_text("{}")
    (folder / "config.json").write_text('{"architecture": "InpaintingUNet", "base_width": 8}')
    args = ["detect", str(tmp_path), "--checkpoint", str(folder), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(args) == 2
    assert "model.safetensors is missing" in cli_error()


def test_evaluate_with_a_missing_checkpoints_root(synthetic_root, tmp_path, cli_error):
    data_root, _ = synthetic_root
    args = ["evaluate", "--data-root", str(data_root), "--checkpoints", str(tmp_path / "none")]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "r.csv")]) == 2
    assert "no checkpoints under" in cli_error()


def test_evaluate_finds_a_category_without_test_images_before_evaluating_any(tmp_path, cli_error):
    for category in ("aaa", "bbb"):
        make_synthetic_category(tmp_path / "data", category, size=32, train=4, test_good=2, test_per_defect=1)
        save_untrained_checkpoint(tmp_path / "ck", category, "ae", size=32)
    shutil.rmtree(tmp_path / "data" / "bbb" / "test")
    out = tmp_path / "r.csv"
    command = ["evaluate", "--data-root", str(tmp_path / "data"), "--checkpoints", str(tmp_path / "ck")]
    assert main([*command, "--category", "aaa", "bbb", "--device", "cpu", "--out", str(out)]) == 2
    assert "bbb/test holds no test images" in cli_error()
    assert not out.exists()  # aaa was not evaluated first, only for the run to stop at bbb


@pytest.mark.parametrize(("norm_layer", "module"), [("none", None), ("batch", torch.nn.BatchNorm2d)])
def test_train_with_another_norm_layer_saves_a_network_with_it(synthetic_root, tmp_path, norm_layer, module):
    data_root, _ = synthetic_root
    args = [*_train(data_root, "synthetic", tmp_path / "ck"), "--quiet", *SMALL, "--steps", "2"]
    assert main([*args, "--norm-layer", norm_layer]) == 0
    folder = tmp_path / "ck" / "synthetic" / "i3ad"
    assert json.loads((folder / "config.json").read_text())["norm_layer"] == norm_layer
    assert json.loads((folder / "detector.json").read_text())["info"]["training"]["norm_layer"] == norm_layer
    layers = {type(layer) for layer in load_checkpoint(folder).model.modules()}
    assert torch.nn.GroupNorm not in layers and (module is None or module in layers)


def test_train_with_levels_without_normalisation_saves_a_network_with_them(synthetic_root, tmp_path):
    data_root, _ = synthetic_root
    args = [*_train(data_root, "synthetic", tmp_path / "ck"), "--quiet", *SMALL, "--steps", "2"]
    assert main([*args, "--norm-free-levels", "1"]) == 0
    folder = tmp_path / "ck" / "synthetic" / "i3ad"
    assert json.loads((folder / "config.json").read_text())["norm_free_levels"] == 1
    model = load_checkpoint(folder).model
    assert not any(isinstance(layer, torch.nn.GroupNorm) for layer in model.down_blocks[0].modules())
    assert any(isinstance(layer, torch.nn.GroupNorm) for layer in model.down_blocks[1].modules())


def test_train_with_synthetic_defects_records_their_share_and_refuses_them_for_the_autoencoder(
    synthetic_root, tmp_path, cli_error
):
    data_root, _ = synthetic_root
    args = [*_train(data_root, "synthetic", tmp_path / "ck"), "--quiet", *SMALL, "--steps", "2"]
    assert main([*args, "--synthetic-defects", "0.5", "--synthetic-defect-looks", "blur", "shift"]) == 0
    detector = json.loads((tmp_path / "ck" / "synthetic" / "i3ad" / "detector.json").read_text())
    assert detector["info"]["training"]["synthetic_defects"] == 0.5
    assert detector["info"]["training"]["synthetic_defect_looks"] == ["shift", "blur"]  # the order they are used in
    assert main([*args, "--name", "other", "--synthetic-defect-looks", "blur"]) == 2
    assert "but no synthetic defects" in cli_error()
    assert main([*args, "--model", "ae", "--name", "ae", "--synthetic-defects", "0.5"]) == 2
    assert "the autoencoder baseline trains without" in cli_error()
    for rule in ("--shrinking-masks", "--last-painting-scores"):
        assert main([*args, "--model", "ae", "--name", "ae", rule]) == 2
        assert "are I3AD settings: the autoencoder does not iterate" in cli_error()
    assert main([*args, "--name", "other", "--synthetic-defects", "2"]) == 2
    assert "must lie in [0, 1], got 2.0" in cli_error()
    assert (
        not (tmp_path / "ck" / "synthetic" / "ae").exists() and not (tmp_path / "ck" / "synthetic" / "other").exists()
    )


def test_a_batch_norm_network_saved_in_half_precision_keeps_its_step_count(synthetic_root, tmp_path):
    data_root, _ = synthetic_root
    tiny = ["--image-size", "16", "--base-width", "4", "--width-multipliers", "1", "2", "--batch-size", "2"]
    # 2,049 is the first count that float16 cannot hold: rounded like the weights, it would be stored as 2,048.
    args = [*_train(data_root, "synthetic", tmp_path / "ck"), "--quiet", *tiny, "--steps", "2049", "--save-fp16"]
    assert main([*args, "--norm-layer", "batch"]) == 0
    model = load_checkpoint(tmp_path / "ck" / "synthetic" / "i3ad").model
    assert {int(layer.num_batches_tracked) for layer in model.modules() if hasattr(layer, "num_batches_tracked")} == {
        2049
    }


def test_train_refuses_images_that_would_not_fit_into_memory_and_leaves_no_folder(
    synthetic_root, tmp_path, cli_error, monkeypatch
):
    # As on a machine with 1 MiB free: past the available memory the kernel would kill the run without a word.
    monkeypatch.setattr(i3ad.batching, "available_memory", lambda: 2**20)
    data_root, _ = synthetic_root
    assert main([*_train(data_root, "synthetic", tmp_path / "ck"), *SMALL, "--steps", "1"]) == 2
    err = cli_error()
    assert "images in 64 x 64-px frames need about" in err and "(train --image-size)" in err
    assert not (tmp_path / "ck" / "synthetic").exists()


def test_running_out_of_memory_in_python_itself_is_reported_with_advice(tmp_path, cli_error, monkeypatch):
    def out_of_memory(args):
        raise MemoryError()  # what Python raises, without a text

    monkeypatch.setattr(cli, "cmd_synth", out_of_memory)
    assert main(["synth", "--out", str(tmp_path / "synth")]) == 2
    assert "the computer ran out of memory; use a smaller --batch-size" in cli_error()
