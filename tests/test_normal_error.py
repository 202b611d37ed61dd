"""The normal error (held-out normal images' mean map per step), the evaluation rows scored with it, and the
evaluation's compiled-network option."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from i3ad.calibration import calibrate_autoencoder, calibrate_inpainting
from i3ad.detector import AnomalyDetector
from i3ad.evaluation import TestSet
from i3ad.metrics import binary_auroc
from i3ad.normal_error import NormalError
from i3ad.pipeline import evaluate_detector
from i3ad.preprocessing import Preprocessing
from i3ad.scoring import DetectionSettings, image_scores, inpaint_step0
from i3ad.similarity import ssim_map


def _textures(count: int, seed: int) -> torch.Tensor:
    """Structured 32 x 32 RGB images; odd-numbered ones carry a bright square (the "defect")."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(12 * x) * torch.cos(9 * y)
    images = (base + 0.05 * torch.randn(count, 3, 32, 32, generator=generator)).clamp(0, 1)
    images[1::2, :, 10:16, 12:18] = 0.95
    return images


def test_stored_at_a_quarter_and_constant_maps_come_back_exactly():
    normal = NormalError.from_mean_maps(torch.full((3, 1, 32, 32), 0.2))
    assert normal.maps.shape == (3, 1, 8, 8) and normal.steps == 3
    assert torch.allclose(normal.template(1, (32, 32), torch.device("cpu")), torch.full((1, 1, 32, 32), 0.2))


def test_subtract_uses_each_steps_template_and_clips_at_zero():
    normal = NormalError(torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.3)]))
    maps = torch.tensor([0.05, 0.2, 0.5]).view(3, 1, 1, 1).expand(3, 1, 16, 16)
    assert normal.subtract(maps, 0)[:, 0, 0, 0].tolist() == pytest.approx([0.0, 0.1, 0.4])
    assert normal.subtract(maps, 1)[:, 0, 0, 0].tolist() == pytest.approx([0.0, 0.0, 0.2])
    # Steps beyond the calibrated ones use the last template.
    assert torch.equal(normal.subtract(maps, 7), normal.subtract(maps, 1))


@pytest.mark.parametrize(
    "maps, message",
    [
        (torch.zeros(1, 4, 4), "shape"),
        (torch.zeros(2, 3, 4, 4), "shape"),
        (torch.zeros(0, 1, 4, 4), "shape"),
        (torch.full((1, 1, 4, 4), float("inf")), "NaN or infinite"),
    ],
)
def test_invalid_maps_are_refused(maps, message):
    with pytest.raises(ValueError, match=message):
        NormalError(maps)


def _test_set(with_masks: bool = False) -> TestSet:
    images = _textures(8, seed=3)
    masks = None
    if with_masks:
        masks = torch.zeros(8, 1, 32, 32)
        masks[1::2, :, 10:16, 12:18] = 1.0
    return TestSet(images, torch.arange(8) % 2, masks)


def _expected_auroc(detector: AnomalyDetector, test: TestSet, settings: DetectionSettings) -> float:
    return binary_auroc(image_scores(detector.run(test.images, settings).anomaly_map), test.labels)


@pytest.mark.parametrize("last_painting_scores", [False, True])
def test_inpainting_sweep_rows_match_the_detector_with_and_without_the_normal_error(unet, last_painting_scores):
    holdout = _textures(6, seed=4)[::2]  # normal images only
    test = _test_set(with_masks=True)
    # tau at the median of step-0 SSIM: each step paints part of the images and passes the rest through.
    tau = ssim_map(test.images, inpaint_step0(unet, test.images, DetectionSettings())).median().item()
    settings = DetectionSettings(
        ssim_threshold=tau, iterations=2, smoothing_sigma=2.0, last_painting_scores=last_painting_scores
    )
    calibration = calibrate_inpainting(unet, holdout, settings, ssim_quantile=None)
    detector = AnomalyDetector(unet, Preprocessing(32, 3), settings, calibration, "widget", "i3ad")
    table = evaluate_detector(detector, test, thresholds=[], max_iterations=2, holdout=holdout)
    assert len(table) == 6 and table["calibrated_threshold"].all()
    assert (table["last_painting_scores"] == last_painting_scores).all()
    for row in table.itertuples():
        at = settings.with_(iterations=row.iterations, subtract_normal_error=row.normal_error_subtracted)
        expected = test.metrics(detector.run(test.images, at).anomaly_map)
        assert row.image_auroc == pytest.approx(_expected_auroc(detector, test, at)), row
        # The pixel metrics rank every pixel, the near-zero ones of raw maps at T >= 1 included.
        assert row.pixel_auroc == pytest.approx(expected["pixel_auroc"], abs=1e-6), row
        assert row.aupro == pytest.approx(expected["aupro"], abs=1e-6), row
    without_holdout = evaluate_detector(detector, test, thresholds=[], max_iterations=2)
    assert len(without_holdout) == 3 and not without_holdout["normal_error_subtracted"].any()
    if last_painting_scores:  # the option changes the pixels' ranking after step 0 (the test is sensitive to it)
        plain = dataclasses.replace(detector, settings=settings.with_(last_painting_scores=False))
        other = evaluate_detector(plain, test, thresholds=[], max_iterations=2, holdout=holdout)
        iterated = table["iterations"] > 0
        assert (table.loc[iterated, "pixel_auroc"] != other.loc[iterated, "pixel_auroc"]).any()


def test_autoencoder_sweep_rows_match_the_detector_with_and_without_the_normal_error(autoencoder):
    holdout = _textures(6, seed=4)[::2]
    settings = DetectionSettings(smoothing_sigma=2.0)
    calibration = calibrate_autoencoder(autoencoder, holdout, settings)
    assert calibration.normal_error.steps == 1 and len(calibration.score_thresholds) == 1
    detector = AnomalyDetector(autoencoder, Preprocessing(32, 3), settings, calibration, "widget", "ae")
    # Its one score threshold is the highest held-out normal score, each image scored as the detector would against
    # the normal error of the other held-out images (its own included, it would partly subtract itself).
    raw = detector.run(holdout, settings.with_(subtract_normal_error=False)).anomaly_map
    scores = []
    for i in range(len(holdout)):
        others = NormalError.from_mean_maps(torch.cat([raw[:i], raw[i + 1 :]]).mean(dim=0, keepdim=True))
        scores.append(image_scores(others.subtract(raw[i : i + 1], 0)).item())
    assert calibration.score_thresholds[0] == pytest.approx(max(scores))
    assert calibration.score_thresholds[0] > detector.run(holdout).scores.max().item()  # above the biased one
    assert calibration.ssim_threshold is None and calibration.holdout_images == len(holdout)
    with pytest.raises(ValueError, match="held-out"):
        calibrate_autoencoder(autoencoder, holdout[:0], settings)
    test = _test_set()
    table = evaluate_detector(detector, test, holdout=holdout)
    assert sorted(table["normal_error_subtracted"]) == [False, True]
    for row in table.itertuples():
        at = settings.with_(subtract_normal_error=row.normal_error_subtracted)
        assert row.image_auroc == pytest.approx(_expected_auroc(detector, test, at)), row


def test_evaluation_can_run_the_network_through_torch_compile(unet, monkeypatch):
    compiled = []

    def fake_compile(model):
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    holdout = _textures(6, seed=4)[::2]
    settings = DetectionSettings(ssim_threshold=0.6, smoothing_sigma=2.0)
    calibration = calibrate_inpainting(unet, holdout, settings, ssim_quantile=None)
    detector = AnomalyDetector(unet, Preprocessing(32, 3), settings, calibration, "widget", "i3ad")
    table = evaluate_detector(detector, _test_set(), thresholds=[], max_iterations=1, compile_network=True)
    assert compiled == [unet] and len(table) == 2
