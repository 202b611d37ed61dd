"""The Gradio app: its event functions called directly, and the launched app driven through gradio_client.

The models are tiny untrained 64-px checkpoints built here (the app does not care whether a model is any good); one
test runs a committed 256-px checkpoint.
"""

from __future__ import annotations

import csv
import math
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import app
from i3ad.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from i3ad.data import load_images
from i3ad.demo import (
    HUB_RETRY_SECONDS,
    OUTPUT_MAX_AGE_S,
    ModelStore,
    default_variant,
    model_defaults,
    new_output_folder,
)
from i3ad.detector import AnomalyDetector
from i3ad.evaluation import RESULT_COLUMNS
from i3ad.hub import CheckpointListing, CheckpointResolver
from i3ad.models import ConvAutoencoder, InpaintingUNet
from i3ad.pipeline import calibrate
from i3ad.preprocessing import Preprocessing
from i3ad.scoring import DetectionSettings
from i3ad.shipped import SHIPPED_SETTINGS
from i3ad.synthetic import make_synthetic_category

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def build_tiny_checkpoints(root: Path, data: Path) -> Path:
    """Checkpoints root with synth/{i3ad, i3ad-small, ae} and other/i3ad (no baseline): untrained 64-px models
    calibrated on a few synthetic normal images."""
    torch.manual_seed(0)
    preprocessing = Preprocessing(image_size=SIZE, channels=3)
    settings = DetectionSettings(iterations=2, smoothing_sigma=2.0)
    for category, seed in (("synth", 0), ("other", 1)):
        index = make_synthetic_category(data, category, size=SIZE, train=4, test_good=1, test_per_defect=1, seed=seed)
        holdout = load_images(sorted((index / "train" / "good").glob("*.png")), preprocessing, workers=1)
        models = {"i3ad": InpaintingUNet(base_width=8, width_multipliers=(1, 2), bottleneck_blocks=1)}
        if category == "synth":
            models["i3ad-small"] = InpaintingUNet(base_width=4, width_multipliers=(1, 2), bottleneck_blocks=1)
            models["ae"] = ConvAutoencoder(image_size=SIZE, base_width=4, latent_dim=8)
        for variant, model in models.items():
            model.eval()
            calibrated, calibration = calibrate(model, holdout, settings, ssim_quantile=0.01)
            detector = AnomalyDetector(model, preprocessing, calibrated, calibration, category, variant)
            save_checkpoint(detector, root / category / variant)
    return root


def write_results_csv(path: Path) -> Path:
    """A small results table in the exact format of `python -m i3ad evaluate`, at the shipped settings."""
    defaults = SHIPPED_SETTINGS.of("i3ad")
    rows = []
    for c, category in enumerate(("synth", "other")):
        common = {"category": category, "anomaly_measure": defaults.anomaly_measure}
        common["smoothing_sigma"] = defaults.smoothing_sigma
        common["normal_error_subtracted"] = defaults.subtract_normal_error
        for t in range(4):
            auroc = 0.7 + 0.05 * t - 0.1 * c
            rows.append(
                {
                    **common,
                    "model": "i3ad",
                    "iterations": t,
                    "ssim_threshold": 0.5,
                    "calibrated_threshold": True,
                    "step0_cell_size": defaults.step0_cell_size,
                    "step0_hidden_groups": defaults.step0_hidden_groups,
                    "shrinking_masks": defaults.shrinking_masks,
                    "iteration_painting": defaults.iteration_painting,
                    "last_painting_scores": defaults.last_painting_scores,
                    "mean_mask_share": 1.0 if t == 0 else 0.1,
                    "image_auroc": auroc,
                    "image_f1_max": auroc - 0.1,
                    "pixel_auroc": auroc + 0.1,
                    "aupro": auroc - 0.2,
                }
            )
        rows.append(
            {
                **common,
                "model": "ae",
                "iterations": 0,
                "ssim_threshold": math.nan,
                "calibrated_threshold": False,
                "step0_cell_size": math.nan,
                "step0_hidden_groups": math.nan,
                "shrinking_masks": math.nan,
                "iteration_painting": math.nan,
                "last_painting_scores": math.nan,
                "mean_mask_share": 1.0,
                "image_auroc": 0.6,
                "image_f1_max": 0.5,
                "pixel_auroc": 0.8,
                "aupro": 0.4,
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows)[list(RESULT_COLUMNS)].to_csv(path, index=False, float_format="%.4f")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AppFiles(NamedTuple):
    checkpoints: Path
    results: Path
    data: Path


@pytest.fixture(scope="module")
def app_files(tmp_path_factory) -> AppFiles:
    """Tiny checkpoints, a results CSV and the synthetic data they came from, shared by this module's tests."""
    base = tmp_path_factory.mktemp("app")
    checkpoints = build_tiny_checkpoints(base / "checkpoints", base / "data")
    return AppFiles(checkpoints, write_results_csv(base / "results" / "benchmark.csv"), base / "data")


@pytest.fixture(scope="module")
def handlers(app_files):
    checkpoints, results, data = app_files
    return app.Handlers(app.AppConfig(CheckpointResolver(checkpoints), results, data_root=data, device="cpu"))


@pytest.fixture
def spot_image(app_files) -> str:
    return str(app_files.data / "synth" / "test" / "spot" / "000.png")


def test_detect_returns_maps_score_gallery_and_files(handlers, spot_image):
    detector = handlers.store.get("synth", "i3ad")
    tau = round(detector.calibration.ssim_threshold, 3)

    heatmap, mask, baseline, summary, steps, files = handlers.detect("synth", "i3ad", spot_image, 2, tau)

    assert heatmap.size == mask.size == baseline.size == (SIZE, SIZE)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert len(steps) == 9  # reconstruction, mask and anomaly map of steps 0, 1, 2
    assert all(isinstance(picture, Image.Image) and "step" in caption for picture, caption in steps)
    assert steps[1][1] == "step 0: mask (every pixel once, by grid masks)"
    names = sorted(Path(f).name for f in files)
    assert names == ["000_heatmap.png", "000_mask.png", "000_scores.csv"]
    assert Image.open(next(f for f in files if f.endswith("_heatmap.png"))).format == "PNG"
    with open(next(f for f in files if f.endswith(".csv"))) as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["iterations"]) for r in rows] == [("i3ad", "0"), ("i3ad", "1"), ("i3ad", "2"), ("ae", "0")]
    # tau is used from T = 1 on, and never by the autoencoder.
    assert [bool(r["ssim_threshold"]) for r in rows] == [False, True, True, False]
    final = rows[2]
    threshold = detector.calibration.score_threshold(2)
    assert float(final["score_threshold"]) == pytest.approx(threshold, abs=1e-4)
    verdict = "ANOMALOUS" if float(final["score"]) > threshold else "NORMAL"
    assert f"## {verdict}" in summary and final["score"] in summary
    # The library's verdict on the same image agrees.
    result = detector.detect(detector.read(spot_image), iterations=2, ssim_threshold=tau)
    assert detector.is_anomalous(result.scores, 2).tolist() == [verdict == "ANOMALOUS"]
    # The slider's rounded tau is taken as the calibrated one: no "indicative only" warning.
    assert "only indicative" not in summary


def test_detect_at_another_tau_says_the_verdict_is_indicative(handlers, spot_image):
    *_, summary, steps, _ = handlers.detect("synth", "i3ad", spot_image, 1, 0.9)
    assert "tau = 0.9000" in summary and "only indicative" in summary
    captions = [caption for _, caption in steps]
    assert captions[3] == "step 1: reconstruction" and re.fullmatch(r"step 1: mask \(\d+% hidden\)", captions[4])
    assert captions[5].startswith("step 1: anomaly map, score ")
    # At T = 0 no tau is used, so none is named and the verdict is not called indicative.
    *_, summary, _, _ = handlers.detect("synth", "i3ad", spot_image, 0, 0.9)
    assert "tau is not used" in summary and "0.9000" not in summary and "only indicative" not in summary


def test_category_change_updates_model_menu_and_threshold_slider(handlers):
    menu, iterations, tau, description, iterations_value, tau_value, examples = handlers.on_category("other")
    assert iterations_value is None and tau_value is None  # a detection now runs at this model's own T and tau
    calibrated = load_checkpoint(handlers.store.resolver.root / "other" / "i3ad").calibration.ssim_threshold
    assert tau["value"] == round(calibrated, 3)
    assert tau["minimum"] <= tau["value"] <= 1  # untrained models calibrate below 0: the slider still reaches it
    assert f"{calibrated:.4f}" in tau["label"] and f"{calibrated:.4f}" in description
    assert iterations["value"] == 2
    assert menu["choices"] == ["i3ad"] and menu["visible"] is False  # one I3AD model: no menu
    assert isinstance(examples, gr.Dataset)

    menu, _, tau_synth, *_ = handlers.on_category("synth")
    assert menu["choices"] == ["i3ad", "i3ad-small"] and menu["visible"] is True
    assert tau_synth["value"] != tau["value"]
    _, tau_small, *_ = handlers.model_controls("synth", "i3ad-small")
    small = load_checkpoint(handlers.store.resolver.root / "synth" / "i3ad-small").calibration.ssim_threshold
    assert tau_small["value"] == round(small, 3)


def test_a_model_that_starts_at_step_0_says_how_to_iterate():
    # The shipped i3ad-small detects at T = 0 by default; its tau only matters once T is raised.
    defaults = model_defaults(load_checkpoint(ROOT / "checkpoints" / "bottle" / "i3ad-small"))
    assert defaults.iterations == 0 and "raise T to iterate: tau applies from T = 1" in defaults.description
    _, tau = app.slider_settings(defaults)
    assert tau["interactive"] and "used from T = 1" in tau["label"]
    assert "raise T" not in model_defaults(load_checkpoint(ROOT / "checkpoints" / "bottle" / "i3ad")).description


@pytest.mark.parametrize(
    ("variants", "device", "expected"),
    [
        (["ae", "i3ad", "i3ad-small"], "cpu", "i3ad-small"),  # the fast network on a CPU
        (["ae", "i3ad", "i3ad-small"], "cuda", "i3ad"),  # the accurate one on a GPU
        (["ae", "i3ad"], "cpu", "i3ad"),
        (["ae", "i3ad-small"], "cuda", "i3ad-small"),
        (["ae", "mine"], "cpu", "mine"),  # a user's own variant name
        (["ae"], "cpu", "ae"),  # only the baseline
    ],
)
def test_default_variant_depends_on_the_device(variants, device, expected):
    assert default_variant(variants, torch.device(device)) == expected


def test_examples_are_synthetic_plus_the_categorys_test_images(handlers, app_files):
    examples = [Path(sample[0]) for sample in handlers.examples("synth")]
    assert len(examples) == 6  # 3 synthetic + good, scratch, spot of synth
    assert all(p.is_file() for p in examples)
    assert Image.open(examples[0]).size == (256, 256)
    assert {p.parent.name for p in examples[3:]} == {"good", "scratch", "spot"}
    assert all(app_files.data / "synth" in p.parents for p in examples[3:])


def test_model_without_baseline_warns_and_leaves_ae_empty(handlers, app_files):
    image = str(app_files.data / "other" / "test" / "good" / "000.png")
    with pytest.warns(UserWarning, match="No usable autoencoder baseline checkpoint for other"):
        _, _, baseline, summary, _, files = handlers.detect("other", "i3ad", image, 0, 0.5)
    assert baseline is None and "Autoencoder" not in summary
    assert len(files) == 3


@pytest.mark.parametrize(
    ("category", "variant", "content", "message"),
    [
        ("synth", "i3ad", b"this is not an image", "not a readable image"),
        ("synth", "i3ad", "truncated", "damaged or truncated"),
        ("nope", "i3ad", "valid", "no checkpoint for category 'nope'"),
        ("../synth", "i3ad", "valid", "not a valid name"),
        ("synth", "i3ad-xl", "valid", "has no model 'i3ad-xl'"),
    ],
)
def test_bad_input_gives_a_clear_error(handlers, spot_image, tmp_path, category, variant, content, message):
    path = tmp_path / "upload.png"
    if content == "valid":
        path.write_bytes(Path(spot_image).read_bytes())
    elif content == "truncated":
        path.write_bytes(Path(spot_image).read_bytes()[:400])
    else:
        path.write_bytes(content)
    with pytest.raises(gr.Error, match=message):
        handlers.detect(category, variant, str(path), 1, 0.5)


def test_no_image_gives_a_clear_error(handlers):
    with pytest.raises(gr.Error, match="Upload an image"):
        handlers.detect("synth", "i3ad", None, 1, 0.5)


def test_benchmark_tab_shows_figures_or_says_results_are_missing(handlers, tmp_path):
    message, table, *figures = handlers.benchmark()
    assert table["visible"] and set(table["value"]["model"]) == {"ae", "i3ad"}
    assert all(f["visible"] for f in figures)
    assert all(f["value"].data for f in figures)

    missing = tmp_path / "results" / "benchmark.csv"
    empty = app.Handlers(app.AppConfig(handlers.store.resolver, missing, device="cpu"))
    message, table, *figures = empty.benchmark()
    assert "No benchmark results" in message and str(missing) in message
    assert table["visible"] is False and not any(f["visible"] for f in figures)

    # A table of one's own whose "i3ad" iterated by another rule than the shipped i3ad: the tab says why it is missing.
    own = tmp_path / "own.csv"
    pd.read_csv(handlers.config.results).assign(iteration_painting="hole").to_csv(own, index=False)
    message, table, *_ = app.Handlers(app.AppConfig(handlers.store.resolver, own, device="cpu")).benchmark()
    assert set(table["value"]["model"]) == {"ae"}
    results = pd.read_csv(handlers.config.results)
    results[results["model"] == "i3ad"].assign(iteration_painting="hole").to_csv(own, index=False)
    only_own, table, *_ = app.Handlers(app.AppConfig(handlers.store.resolver, own, device="cpu")).benchmark()
    assert "has no rows at the shipped settings" in only_own and "Note: no i3ad rows" in only_own
    assert "Note: no i3ad rows at its summary settings; iteration_painting: hole (summary: cells)" in message


def test_launched_app_answers_gradio_client(app_files, monkeypatch, tmp_path):
    from gradio_client import Client, handle_file

    checkpoints, results, data = app_files
    monkeypatch.setenv("I3AD_CHECKPOINTS", str(checkpoints))
    monkeypatch.setenv("I3AD_RESULTS", str(results))
    monkeypatch.delenv("I3AD_HUB_REPO", raising=False)
    demo = app.build_app()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path))
        image = data / "synth" / "test" / "scratch" / "000.png"
        heatmap, mask, baseline, summary, steps, files = client.predict(
            "synth", "i3ad", handle_file(str(image)), 1, 0.5, api_name="/detect"
        )
        assert "Anomaly score" in summary and "score threshold" in summary
        assert Image.open(heatmap).size == (SIZE, SIZE) and Path(mask).is_file() and Path(baseline).is_file()
        assert len(steps) == 6
        downloaded = {Path(f).name: Path(f) for f in files}
        assert set(downloaded) == {"000_heatmap.png", "000_mask.png", "000_scores.csv"}
        assert "score" in downloaded["000_scores.csv"].read_text().splitlines()[0]
        # T and tau None: the chosen model's own (the page opened on another category, with other values).
        detector = load_checkpoint(checkpoints / "synth" / "i3ad")
        *_, summary, steps, _ = client.predict("synth", "i3ad", handle_file(str(image)), None, None, api_name="/detect")
        assert f"T = {detector.default_iterations}, SSIM threshold tau = {detector.calibration.tau_text}" in summary
        assert "only indicative" not in summary and len(steps) == 3 * (detector.default_iterations + 1)

        not_image = tmp_path / "fake.png"
        not_image.write_text("hello")
        with pytest.raises(Exception, match=r"fake\.png: not a readable image"):
            client.predict("synth", "i3ad", handle_file(str(not_image)), 1, 0.5, api_name="/detect")
    finally:
        demo.close()


@pytest.mark.skipif(not (ROOT / "checkpoints").is_dir(), reason="no committed checkpoints/ folder")
def test_committed_checkpoint_detects_on_a_synthetic_256_image(tmp_path):
    from i3ad.demo import ModelStore, detect_image, synthetic_examples

    store = ModelStore(CheckpointResolver(ROOT / "checkpoints"))
    category = next((c for c, variants in store.available().items() if "i3ad" in variants), None)
    if category is None:
        pytest.skip("no committed i3ad checkpoint")
    spot = synthetic_examples(tmp_path / "examples")[1]
    report = detect_image(store, category, "i3ad", spot, iterations=0, out_dir=tmp_path / "out", with_baseline=False)
    assert math.isfinite(report.score) and report.threshold > 0
    assert report.heatmap.size == report.mask.size == (256, 256)
    assert len(report.steps) == 3 and all(p.is_file() for p in report.files)


@pytest.mark.skipif(
    not (ROOT / "checkpoints" / "magnetic_tile" / "i3ad-small").is_dir(), reason="no committed magnetic_tile model"
)
def test_committed_fit_checkpoint_shows_a_wide_image_in_its_own_shape(tmp_path):
    from i3ad.demo import ModelStore, detect_image

    store = ModelStore(CheckpointResolver(ROOT / "checkpoints"))
    detector = store.get("magnetic_tile", "i3ad-small")
    assert detector.preprocessing.geometry == "fit"
    wide = tmp_path / "wide.png"
    texture = np.random.default_rng(0).integers(90, 160, size=(120, 360), dtype=np.uint8)
    Image.fromarray(texture).save(wide)
    report = detect_image(store, "magnetic_tile", "i3ad-small", wide, out_dir=tmp_path / "out")
    assert report.heatmap.size == report.mask.size == report.baseline.heatmap.size == (360, 120)
    _, _, height, width = detector.preprocessing.content_box(120, 360)
    assert all(picture.size == (width, height) for picture, _ in report.steps)
    assert math.isfinite(report.score) and math.isfinite(report.baseline.score)
    assert report.input_note is None and "Note:" not in report.summary()  # fit keeps the aspect ratio


@pytest.mark.skipif(not (ROOT / "checkpoints" / "bottle" / "i3ad-small").is_dir(), reason="no committed bottle model")
def test_a_stretch_checkpoint_notes_an_image_it_distorts(tmp_path):
    from i3ad.demo import ModelStore, detect_image

    store = ModelStore(CheckpointResolver(ROOT / "checkpoints"))
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((100, 300, 3), 128, dtype=np.uint8)).save(wide)
    report = detect_image(store, "bottle", "i3ad-small", wide, iterations=0, out_dir=tmp_path / "out")
    assert "Note: this 300x100 image is stretched 3.0-fold" in report.summary()


def test_a_model_being_loaded_does_not_hold_up_requests_for_loaded_ones():
    started, release, loads = threading.Event(), threading.Event(), []

    class SlowResolver:  # stands for a resolver whose one model is a long download
        def listing(self) -> CheckpointListing:
            return CheckpointListing({"widget": ["fast", "slow"]}, complete=True)

        def load(self, category: str, variant: str, device: object) -> object:
            loads.append(variant)
            if variant == "slow":
                started.set()
                assert release.wait(10)
            return object()

    store = ModelStore(SlowResolver())
    fast = store.get("widget", "fast")
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(store.get, "widget", "slow") for _ in range(2)]
        assert started.wait(10)
        assert pool.submit(store.get, "widget", "fast").result(timeout=5) is fast
        release.set()
        assert slow[0].result(timeout=10) is slow[1].result(timeout=10)
    assert loads == ["fast", "slow"]  # each model loaded once


class HubBackLater:
    """Stands for a resolver whose Hub repo cannot be listed at first and answers from the second listing on, which
    waits for ``hold`` when one is given (a slow network)."""

    repo_id = "user/repo"

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.asked, self.hold, self.started = 0, hold, threading.Event()

    def listing(self) -> CheckpointListing:
        self.asked += 1
        if self.asked == 1:
            return CheckpointListing({"local": ["i3ad"]}, complete=False)
        self.started.set()
        if self.hold is not None:
            assert self.hold.wait(10)
        return CheckpointListing({"local": ["i3ad"], "hub": ["i3ad"]}, complete=True)


def test_a_hub_repo_that_could_not_be_listed_is_asked_again_after_a_while():
    now = [1000.0]
    resolver = HubBackLater()
    store = ModelStore(resolver, clock=lambda: now[0])
    assert store.available() == {"local": ["i3ad"]}
    now[0] += HUB_RETRY_SECONDS / 2
    assert store.available() == {"local": ["i3ad"]} and resolver.asked == 1  # not on every request
    now[0] += HUB_RETRY_SECONDS
    assert store.available() == {"local": ["i3ad"], "hub": ["i3ad"]}
    now[0] += 10 * HUB_RETRY_SECONDS
    assert store.available() == {"local": ["i3ad"], "hub": ["i3ad"]} and resolver.asked == 2  # complete: kept


def test_requests_do_not_wait_for_the_hub_being_asked_again():
    now, release = [1000.0], threading.Event()
    resolver = HubBackLater(hold=release)
    store = ModelStore(resolver, clock=lambda: now[0])
    store.available()
    now[0] += HUB_RETRY_SECONDS
    with ThreadPoolExecutor(2) as pool:
        asking_again = pool.submit(store.available)
        assert resolver.started.wait(10)
        # While one request waits for the Hub, another gets the last listing at once.
        assert pool.submit(store.available).result(timeout=5) == {"local": ["i3ad"]}
        release.set()
        assert asking_again.result(timeout=10) == {"local": ["i3ad"], "hub": ["i3ad"]}
    assert resolver.asked == 2


def test_without_local_checkpoints_an_unlisted_hub_repo_is_named(app_files):
    class Unreachable(HubBackLater):
        def listing(self) -> CheckpointListing:
            return CheckpointListing({}, complete=False)

    config = app.AppConfig(Unreachable(), app_files.results, device="cpu")
    with pytest.raises(CheckpointError, match="no local checkpoints, and Hub repo 'user/repo' could not be listed"):
        app.build_app(config)


def test_a_page_load_lists_the_categories_again(app_files):
    now = [1000.0]
    handlers = app.Handlers(app.AppConfig(HubBackLater(), app_files.results, device="cpu"))
    handlers.store = ModelStore(HubBackLater(), clock=lambda: now[0])
    assert handlers.category_menu()["choices"] == ["local"]
    now[0] += HUB_RETRY_SECONDS
    assert handlers.category_menu()["choices"] == ["local", "hub"]  # the Hub repo answers now


def test_output_folders_older_than_their_age_are_removed(tmp_path):
    old, recent = new_output_folder(tmp_path), new_output_folder(tmp_path)
    (old / "heatmap.png").write_bytes(b"x")
    stale = time.time() - OUTPUT_MAX_AGE_S - 60
    os.utime(old, (stale, stale))
    (tmp_path / "examples").mkdir()  # not a detection's folder: kept whatever its age
    os.utime(tmp_path / "examples", (stale, stale))
    fresh = new_output_folder(tmp_path)
    assert not old.exists() and recent.is_dir() and fresh.is_dir() and (tmp_path / "examples").is_dir()


def test_the_data_roots_examples_may_be_served_wherever_it_lies(tmp_path):
    resolver = CheckpointResolver(tmp_path)
    options = app.launch_options(app.AppConfig(resolver, tmp_path / "r.csv", data_root=Path("/data/mvtec")))
    assert options["allowed_paths"] == ["/data/mvtec"] and options["max_file_size"] == app.MAX_UPLOAD_SIZE
    assert app.launch_options(app.AppConfig(resolver, tmp_path / "r.csv"))["allowed_paths"] is None
