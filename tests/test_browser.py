"""End to end in a real browser: Debian's chromium, driven by Playwright, uses the launched app like a person would."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from test_app import build_tiny_checkpoints, free_port, write_results_csv

import app
from i3ad.checkpoints import load_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT_COPY = Path("/tmp/i3ad_app.png")  # for people to look at after a run
TIMEOUT_MS = 120_000  # the machine may be slow and busy


@pytest.fixture
def served_app(tmp_path, monkeypatch):
    checkpoints = build_tiny_checkpoints(tmp_path / "checkpoints", tmp_path / "data")
    results = write_results_csv(tmp_path / "results" / "benchmark.csv")
    monkeypatch.setenv("I3AD_CHECKPOINTS", str(checkpoints))
    monkeypatch.setenv("I3AD_RESULTS", str(results))
    monkeypatch.delenv("I3AD_HUB_REPO", raising=False)
    # Test images of "synth" only, so that its examples differ from those of the first category, "other".
    shutil.copytree(tmp_path / "data" / "synth", tmp_path / "data_root" / "synth")
    monkeypatch.setenv("I3AD_DATA_ROOT", str(tmp_path / "data_root"))
    demo = app.build_app()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", tmp_path / "data"
    demo.close()


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium is absent (apt-get install -y chromium)")
def test_upload_detect_and_benchmark_in_chromium(served_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)  # assertions wait as long as actions: the app may be slow to answer
    url, data = served_app
    # On a CPU the app opens a category on its small model.
    synth_tau = load_checkpoint(tmp_path / "checkpoints" / "synth" / "i3ad-small").calibration.ssim_threshold
    image = data / "synth" / "test" / "spot" / "000.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url, wait_until="domcontentloaded")

            # The first category ("other") has one model: no model menu. Choosing "synth" (two I3AD models and
            # the AE baseline) shows the menu, on i3ad-small, and sets tau to that model's calibrated value.
            # Its examples are the three synthetic images; synth's add its normal, scratch and spot test images.
            expect(page.locator("#variant")).to_be_hidden()
            expect(page.locator("#examples img")).to_have_count(3)
            page.locator("#category input").click()
            page.get_by_role("option", name="synth").click()
            expect(page.locator("#variant")).to_be_visible()
            expect(page.locator("#tau input[type=range]")).to_have_value(str(round(synth_tau, 3)))
            expect(page.locator("#examples img")).to_have_count(6)

            # Upload, then move both sliders: T from its default 2 down to 1 (keyboard), tau to 0.45 (its box).
            page.locator("#image input[type=file]").set_input_files(str(image))
            expect(page.locator("#image img")).to_be_visible()
            iterations = page.locator("#iterations input[type=range]")
            expect(iterations).to_have_value("2")
            iterations.focus()
            iterations.press("ArrowLeft")
            expect(iterations).to_have_value("1")
            tau = page.locator("#tau input[type=number]")
            tau.fill("0.45")
            tau.press("Enter")
            expect(page.locator("#tau input[type=range]")).to_have_value("0.45")

            page.locator("#run").click()
            summary = page.locator("#summary")
            expect(summary).to_contain_text("Anomaly score")
            expect(summary).to_contain_text("Iterations T = 1, SSIM threshold tau = 0.4500")
            assert re.search(r"(NORMAL|ANOMALOUS)", summary.inner_text())
            heatmap = page.locator("#heatmap img")
            expect(heatmap).to_be_visible()
            assert heatmap.evaluate("img => img.complete && img.naturalWidth") == 64
            expect(page.locator("#baseline img")).to_be_visible()
            expect(page.locator("#steps img")).to_have_count(6)  # reconstruction, mask, map of steps 0 and 1
            page.screenshot(path=tmp_path / "detect.png", full_page=True)
            shutil.copy(tmp_path / "detect.png", SCREENSHOT_COPY)

            page.get_by_role("tab", name="Benchmark").click()
            plots = page.locator(".js-plotly-plot")
            expect(plots).to_have_count(3)
            expect(plots.first.locator(".main-svg").first).to_be_visible()
            expect(plots.first).to_contain_text("image AUROC")
            expect(page.locator("#benchmark-table")).to_contain_text("synth")
            page.screenshot(path=tmp_path / "benchmark.png", full_page=True)
            shutil.copy(tmp_path / "benchmark.png", SCREENSHOT_COPY.with_name("i3ad_app_benchmark.png"))
        finally:
            browser.close()
