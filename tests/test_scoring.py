"""The detector's guarantees: exact pass-through of kept pixels, step 0 never seeing a pixel, skipping of repeated
or empty masks, and the settings' validation."""

from __future__ import annotations

import pytest
import torch

from i3ad import scoring
from i3ad.masks import complementary_grid_masks, hide_mirror_copies, step0_grid_masks
from i3ad.preprocessing import Preprocessing, pixel_sources
from i3ad.scoring import (
    ITERATION_PAINTINGS,
    DetectionSettings,
    anomaly_map,
    autocast_for,
    detect_by_autoencoder,
    detect_by_inpainting,
    image_scores,
    inpaint_step0,
    paint,
)
from i3ad.similarity import dilate, ssim_map


class PaintCounter:
    """Records the batch size of every forward call of a model (a forward pre-hook)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = model.register_forward_pre_hook(lambda _module, args: self.batches.append(args[0].shape[0]))

    def __enter__(self) -> PaintCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _random_masks(shape, share: float, seed: int) -> torch.Tensor:
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < share).float()


# --- paint -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["unet", "folded_unet"])
@pytest.mark.parametrize("size", [32, 64])
def test_paint_keeps_unmasked_pixels_bit_exact(network, size, request):
    unet = request.getfixturevalue(network)
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    masks = _random_masks((3, 1, size, size), 0.4, 1)
    with torch.no_grad():
        painted = paint(unet, images, masks)
        painting = unet(images, masks)
    kept = (masks == 0).expand_as(images)
    hidden = ~kept
    assert torch.equal(painted[kept], images[kept])
    assert torch.equal(painted[hidden], painting[hidden])
    # The test means something: the network's painting differs from the input at kept pixels.
    assert not torch.equal(painting[kept], images[kept])


def test_paint_with_empty_and_full_masks(unet, images32):
    with torch.no_grad():
        assert torch.equal(paint(unet, images32, torch.zeros(2, 1, 32, 32)), images32)
        full = paint(unet, images32, torch.ones(2, 1, 32, 32))
        assert torch.equal(full, unet(images32, torch.ones(2, 1, 32, 32)))


# --- detect_by_inpainting: pass-through ----------------------------------------------------------------------------


@pytest.mark.parametrize("rule", [{}, {"shrinking_masks": True}, {"iteration_painting": "cells"}])
@pytest.mark.parametrize("size", [32, 64])
def test_every_iteration_keeps_unmasked_pixels_bit_exact(unet, size, rule):
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, size, size, generator=generator)
    images[:, :, size // 4 : size // 2, size // 4 : size // 2] = 0.5  # a flat patch: SSIM there differs
    # tau at the median of step-0 SSIM: the masks hide part of each image, not all or nothing.
    step0 = inpaint_step0(unet, images, DetectionSettings())
    tau = ssim_map(images, step0).median().item()
    settings = DetectionSettings(iterations=3, ssim_threshold=tau, mask_dilation=1, **rule)
    result = detect_by_inpainting(unet, images, settings)
    assert len(result.reconstructions) == len(result.masks) == len(result.ssim_maps) == 4
    assert len(result.anomaly_maps) == 4
    torch.testing.assert_close(result.reconstructions[0], step0, rtol=0, atol=0)
    assert torch.equal(result.masks[0], torch.ones(2, 1, size, size))
    for t in range(1, 4):
        mask, reconstruction = result.masks[t], result.reconstructions[t]
        assert mask.shape == (2, 1, size, size)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        share = mask.mean().item()
        assert 0.0 < share < 1.0, f"step {t}: the mask should hide part of the images, hides {share:.2f}"
        kept = (mask == 0).expand_as(images)
        assert torch.equal(reconstruction[kept], images[kept]), f"step {t} changed a kept pixel"
        # Hidden pixels were re-painted (they differ from the input).
        assert not torch.equal(reconstruction[~kept], images[~kept])


def test_mask_is_the_dilated_thresholded_ssim_of_the_previous_step(unet, images32):
    settings = DetectionSettings(iterations=2, ssim_threshold=0.6, mask_dilation=2)
    result = detect_by_inpainting(unet, images32, settings)
    for t in (1, 2):
        below = (result.ssim_maps[t - 1] < 0.6).float()
        expected = torch.nn.functional.max_pool2d(below, 5, stride=1, padding=2)
        assert torch.equal(result.masks[t], expected)
        torch.testing.assert_close(result.ssim_maps[t], ssim_map(images32, result.reconstructions[t]))
        torch.testing.assert_close(result.anomaly_maps[t], anomaly_map(images32, result.reconstructions[t], settings))


def test_threshold_below_every_ssim_leaves_the_image_unchanged(unet, images32):
    settings = DetectionSettings(iterations=4, ssim_threshold=-1.0)
    with PaintCounter(unet) as counter:
        result = detect_by_inpainting(unet, images32, settings)
    assert result.ssim_maps[0].min() > -1.0
    assert counter.batches == [settings.step0_masks * 2]  # only step 0 ran the network
    for t in range(1, 5):
        assert torch.equal(result.masks[t], torch.zeros(2, 1, 32, 32))
        assert torch.equal(result.reconstructions[t], images32)
        torch.testing.assert_close(result.ssim_maps[t], torch.ones(2, 1, 32, 32), atol=1e-6, rtol=0)


def test_zero_iterations_is_step_zero_only(unet, images32):
    result = detect_by_inpainting(unet, images32, DetectionSettings(iterations=0))
    assert len(result.reconstructions) == 1
    assert result.step_scores.shape == (1, 2)
    torch.testing.assert_close(result.scores, image_scores(result.anomaly_map))


def test_step_scores_are_the_maxima_of_each_steps_map(unet, images32):
    result = detect_by_inpainting(unet, images32, DetectionSettings(iterations=2, ssim_threshold=0.7))
    assert result.step_scores.shape == (3, 2)
    for t in range(3):
        assert torch.equal(result.step_scores[t], result.anomaly_maps[t].flatten(1).amax(1))
    assert torch.equal(result.scores, result.step_scores[-1])
    assert result.anomaly_map is result.anomaly_maps[-1]


def test_maps_are_computed_only_for_the_steps_asked_for(unet, images32, monkeypatch):
    computed = []
    measure = scoring.anomaly_map
    monkeypatch.setattr(
        scoring, "anomaly_map", lambda images, r, *args: computed.append(r) or measure(images, r, *args)
    )
    result = detect_by_inpainting(unet, images32, DetectionSettings(iterations=3, ssim_threshold=0.7))
    assert computed == []  # the loop needs the SSIM maps only
    scores = result.scores
    assert len(computed) == 1 and computed[0] is result.reconstructions[3]
    assert result.step_map(-1) is result.step_map(3)  # computed once, kept
    assert torch.equal(result.step_scores[-1], scores)
    assert len(computed) == 4
    with pytest.raises(IndexError):
        result.step_map(4)


# --- shrinking masks and painting in cells -----------------------------------------------------------------------


def _part_hidden(images: torch.Tensor, model, **changes) -> DetectionSettings:
    """T = 4 at a tau (the median of step-0 SSIM) at which the masks hide part of each image."""
    tau = ssim_map(images, inpaint_step0(model, images, DetectionSettings())).median().item()
    return DetectionSettings(iterations=4, ssim_threshold=tau, mask_dilation=1, **changes)


def test_shrinking_masks_stay_within_the_last_mask(unet):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    growing = detect_by_inpainting(unet, images, _part_hidden(images, unet))
    # Without the option the masks do grow here (the test is sensitive to it).
    assert any((growing.masks[t] > growing.masks[t - 1]).any() for t in range(2, 5))
    settings = _part_hidden(images, unet, shrinking_masks=True)
    result = detect_by_inpainting(unet, images, settings)
    assert torch.equal(result.masks[1], growing.masks[1])  # step 1's mask comes from step 0 alone either way
    for t in range(2, 5):
        below = dilate((result.ssim_maps[t - 1] < settings.ssim_threshold).float(), settings.mask_dilation)
        assert torch.equal(result.masks[t], below * result.masks[t - 1])
        assert result.masks[t].sum() > 0


@pytest.mark.parametrize("hidden_groups", [1, 2])
def test_painting_in_cells_paints_each_group_from_the_last_reconstruction(unet, hidden_groups):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    settings = _part_hidden(
        images, unet, iteration_painting="cells", step0_cell_size=4, step0_hidden_groups=hidden_groups
    ).with_(iterations=2)
    result = detect_by_inpainting(unet, images, settings)
    passes = step0_grid_masks(4, hidden_groups, 4, 32, 32)
    for t in (1, 2):
        mask = result.masks[t]
        assert 0 < mask.mean() < 1
        context = torch.where(mask > 0.5, result.reconstructions[t - 1], images)
        total = torch.zeros_like(images)
        with torch.no_grad():
            for k in range(4):
                hidden = passes[k : k + 1] * mask
                total += hidden * unet(context, hidden)
        expected = torch.where(mask > 0.5, total / hidden_groups, images)  # each hidden pixel's mean painting
        torch.testing.assert_close(result.reconstructions[t], expected, atol=1e-5, rtol=0)


def test_painting_in_cells_of_one_image_in_a_batch_equals_painting_it_alone(unet, images32):
    # Image 0's step 0 is perfect (its masks stay empty, it passes through); image 1's is its negative, so only image 1
    # is painted after step 0: the path that paints part of the batch.
    step0 = torch.stack([images32[0], 1.0 - images32[1]])
    settings = DetectionSettings(
        iterations=3, ssim_threshold=0.5, mask_dilation=1, iteration_painting="cells", shrinking_masks=True
    )
    with PaintCounter(unet) as counter:
        together = detect_by_inpainting(unet, images32, settings, step0=step0)
    alone = detect_by_inpainting(unet, images32[1:], settings, step0=step0[1:])
    assert counter.batches == [settings.step0_masks] * 3  # image 1's K passes at each step, image 0 never
    for t in range(1, 4):
        assert torch.equal(together.reconstructions[t][0], images32[0])
        torch.testing.assert_close(together.reconstructions[t][1:], alone.reconstructions[t], atol=1e-6, rtol=0)


@pytest.mark.parametrize("rule", [{}, {"shrinking_masks": True, "iteration_painting": "cells"}])
def test_last_painting_scores_keep_each_pixels_score_from_the_last_step_that_painted_it(unet, rule):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    settings = _part_hidden(images, unet, **rule)
    plain = detect_by_inpainting(unet, images, settings)
    result = detect_by_inpainting(unet, images, settings.with_(last_painting_scores=True))
    expected = plain.step_map(0)
    torch.testing.assert_close(result.step_map(0), expected, rtol=0, atol=0)
    for t in range(1, 5):
        painted = result.masks[t] > 0.5
        assert 0 < painted.float().mean() < 1  # a step that paints some pixels and passes others through
        expected = torch.where(painted, plain.step_map(t), expected)
        torch.testing.assert_close(result.step_map(t), expected, rtol=0, atol=0)
    # The masks and reconstructions are those of the plain run: the option changes only how pixels are scored.
    assert all(torch.equal(a, b) for a, b in zip(result.reconstructions, plain.reconstructions, strict=True))
    assert not torch.equal(result.anomaly_map, plain.anomaly_map)


def test_step0_of_double_precision_images_is_float32(unet, images32):
    step0 = inpaint_step0(unet, images32.double(), DetectionSettings())
    assert step0.dtype == torch.float32
    torch.testing.assert_close(step0, inpaint_step0(unet, images32, DetectionSettings()))


def test_painting_in_cells_repaints_an_unchanged_mask(unet, images32):
    # tau = 1 hides every pixel at every step; the cells around each hole now hold the last reconstruction.
    settings = DetectionSettings(iterations=3, ssim_threshold=1.0, iteration_painting="cells")
    with PaintCounter(unet) as counter:
        result = detect_by_inpainting(unet, images32, settings)
    assert counter.batches == [settings.step0_masks * 2] * 4
    for t in (2, 3):
        assert torch.equal(result.masks[t], result.masks[t - 1])
        assert not torch.equal(result.reconstructions[t], result.reconstructions[t - 1])


# --- step 0 ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "cell_size", "hidden"), [(2, 1, 1), (3, 4, 1), (4, 8, 1), (4, 8, 3)])
@pytest.mark.parametrize("size", [32, 40])
@pytest.mark.parametrize("network", ["unet", "folded_unet"])
def test_step0_never_lets_a_pixel_see_itself(network, count, cell_size, hidden, size, request):
    # The folded network sees each pixel as one channel of a 2 x 2 block: a hidden pixel must not leak through its
    # block's visible neighbours either.
    model = request.getfixturevalue(network)
    settings = DetectionSettings(step0_masks=count, step0_cell_size=cell_size, step0_hidden_groups=hidden)
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    before = inpaint_step0(model, images, settings)
    for y, x in [(0, 0), (13, size - 7)]:
        changed = images.clone()
        changed[0, :, y, x] = 1.0 - changed[0, :, y, x]
        changed[1, :, y, x] = torch.tensor([0.0, 1.0, 0.5])
        after = inpaint_step0(model, changed, settings)
        # Exactly no change at p: its painting comes only from the pass where p is hidden (and zeroed).
        assert torch.equal(after[:, :, y, x], before[:, :, y, x])
        # ... while the pixels that do see p (in their own passes) change: the test is sensitive.
        assert not torch.equal(after, before)
        # And the network does react to p where p is visible: a pass hiding p's neighbour but not p.
        grids = step0_grid_masks(count, hidden, cell_size, size, size)
        visible_pass = next(k for k in range(count) if grids[k, 0, y, x] == 0)
        with torch.no_grad():
            seen = model(changed, grids[visible_pass].expand(2, 1, size, size))
            unseen = model(images, grids[visible_pass].expand(2, 1, size, size))
        assert not torch.equal(seen, unseen)


@pytest.mark.parametrize("channels", [3, 1])
def test_step0_stitches_the_k_paintings(unet, unet_grey, channels):
    model = unet if channels == 3 else unet_grey
    images = torch.rand(2, channels, 32, 32, generator=torch.Generator().manual_seed(4))
    settings = DetectionSettings(step0_masks=3, step0_cell_size=4)
    step0 = inpaint_step0(model, images, settings)
    grids = complementary_grid_masks(3, 4, 32, 32)
    expected = torch.zeros_like(images)
    with torch.no_grad():
        for k in range(3):
            mask = grids[k : k + 1].expand(2, 1, 32, 32)
            expected = torch.where(mask > 0.5, model(images, mask), expected)
    torch.testing.assert_close(step0, expected, atol=1e-6, rtol=0)


def test_a_denser_step0_averages_each_pixels_paintings(unet):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    step0 = inpaint_step0(unet, images, DetectionSettings(step0_masks=4, step0_hidden_groups=2, step0_cell_size=4))
    masks = step0_grid_masks(4, 2, 4, 32, 32)
    total = torch.zeros_like(images)
    with torch.no_grad():
        for k in range(4):
            mask = masks[k : k + 1].expand(2, 1, 32, 32)
            total += mask * unet(images, mask)
    torch.testing.assert_close(step0, total / 2, atol=1e-6, rtol=0)


# --- skipping of repeated and empty masks ------------------------------------------------------------------------


def test_unchanged_mask_reuses_the_reconstruction_without_painting_again(unet, images32):
    # tau = 1: every pixel of an untrained model's reconstruction is below it, so every mask hides everything.
    settings = DetectionSettings(iterations=3, ssim_threshold=1.0)
    with PaintCounter(unet) as counter:
        result = detect_by_inpainting(unet, images32, settings)
    for t in (1, 2, 3):
        assert torch.equal(result.masks[t], torch.ones(2, 1, 32, 32))
    # Step 0 (K * B images), step 1 (B images), then nothing: steps 2 and 3 have step 1's mask.
    assert counter.batches == [settings.step0_masks * 2, 2]
    assert torch.equal(result.reconstructions[2], result.reconstructions[1])
    assert torch.equal(result.reconstructions[3], result.reconstructions[1])
    # ... and what was reused is what painting with that mask gives.
    with torch.no_grad():
        torch.testing.assert_close(result.reconstructions[1], unet(images32, torch.ones(2, 1, 32, 32)))


def test_empty_mask_image_passes_through_while_the_other_is_painted(unet, images32):
    # Image 0's step-0 reconstruction is perfect (SSIM 1, empty mask); image 1's is the negative (low SSIM).
    step0 = torch.stack([images32[0], 1.0 - images32[1]])
    settings = DetectionSettings(iterations=3, ssim_threshold=0.5, mask_dilation=1)
    with PaintCounter(unet) as counter:
        result = detect_by_inpainting(unet, images32, settings, step0=step0)
    assert counter.batches[0] == 1  # only image 1 was painted at step 1
    assert torch.equal(result.reconstructions[0], step0)
    for t in (1, 2, 3):
        assert torch.equal(result.masks[t][0], torch.zeros(1, 32, 32))
        assert torch.equal(result.reconstructions[t][0], images32[0])
        assert result.masks[t][1].sum() > 0
        kept = (result.masks[t][1] == 0).expand(3, -1, -1)
        assert torch.equal(result.reconstructions[t][1][kept], images32[1][kept])
    assert torch.equal(result.reconstructions[1][1], paint(unet, images32[1:], result.masks[1][1:])[0])


def test_an_empty_batch_paints_nothing_after_step_0(unet):
    with PaintCounter(unet) as counter:
        result = detect_by_inpainting(unet, torch.rand(0, 3, 32, 32), DetectionSettings(iterations=2))
    assert counter.batches[1:] == []  # no step after step 0 runs the network
    assert result.scores.shape == (0,) and len(result.reconstructions) == 3


@pytest.mark.parametrize("tau", [0.3, 0.8])
def test_every_step_equals_painting_with_its_own_mask(unet, tau):
    """Whatever is skipped or reused, step t's reconstruction is what painting with step t's mask gives."""
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    images[1] = 0.5 + 0.1 * (images[1] - 0.5)  # a low-contrast image among the others
    result = detect_by_inpainting(unet, images, DetectionSettings(iterations=3, ssim_threshold=tau))
    for t in range(1, 4):
        mask = result.masks[t]
        with torch.no_grad():
            expected = paint(unet, images, mask)  # an empty mask gives the input back
        torch.testing.assert_close(result.reconstructions[t], expected, atol=1e-5, rtol=0)
        for b in range(3):
            if mask[b].amax() == 0:
                assert torch.equal(result.reconstructions[t][b], images[b])
            if t >= 2 and torch.equal(mask[b], result.masks[t - 1][b]):
                assert torch.equal(result.reconstructions[t][b], result.reconstructions[t - 1][b])


# --- inputs and settings -------------------------------------------------------------------------------------------


def test_detect_rejects_bad_inputs(unet):
    with pytest.raises(ValueError, match="expected images"):
        detect_by_inpainting(unet, torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="expected images"):
        inpaint_step0(unet, torch.rand(3, 32, 32), DetectionSettings())
    bad = torch.rand(1, 3, 32, 32)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        detect_by_inpainting(unet, bad)


@pytest.mark.parametrize(
    "changes",
    [
        {"iterations": -1},
        {"iterations": 101},
        {"ssim_threshold": 1.5},
        {"ssim_threshold": -1.01},
        {"step0_masks": 1},
        {"step0_hidden_groups": 0},
        {"step0_hidden_groups": 4},
        {"step0_hidden_groups": 1.5},
        {"step0_masks": 2, "step0_hidden_groups": 2},
        {"step0_cell_size": 0},
        {"mask_dilation": -1},
        {"smoothing_sigma": -0.5},
        {"smoothing_sigma": float("inf")},
        {"smoothing_sigma": float("nan")},
        {"ssim_threshold": float("nan")},
        {"iterations": 101},
        {"iterations": 2.0},
        {"anomaly_measure": "mse"},
        {"shrinking_masks": 1},
        {"iteration_painting": "blocks"},
        {"last_painting_scores": "yes"},
    ],
)
def test_detection_settings_reject_bad_values(changes):
    with pytest.raises(ValueError):
        DetectionSettings(**changes)


def test_detection_settings_show_a_value_of_the_wrong_type_as_such():
    with pytest.raises(ValueError, match=r"ssim_threshold must lie in \[-1, 1\] \(SSIM's range\), got '0\.5'"):
        DetectionSettings(ssim_threshold="0.5")


def test_detection_settings_round_trip():
    settings = DetectionSettings(
        iterations=3,
        ssim_threshold=0.25,
        anomaly_measure="ssim",
        shrinking_masks=True,
        iteration_painting="cells",
        last_painting_scores=True,
    )
    assert DetectionSettings(**settings.to_dict()) == settings
    changed = settings.with_(iterations=5)
    assert changed.iterations == 5 and changed.ssim_threshold == 0.25
    assert settings.iterations == 3


def test_anomaly_measures_differ_and_smoothing_applies(images32):
    reconstruction = (images32 + 0.2 * torch.rand(images32.shape, generator=torch.Generator().manual_seed(7))).clamp(
        0, 1
    )
    plain = anomaly_map(images32, reconstruction, DetectionSettings(anomaly_measure="ssim", smoothing_sigma=0))
    torch.testing.assert_close(plain, 1 - ssim_map(images32, reconstruction))
    combined = anomaly_map(images32, reconstruction, DetectionSettings(anomaly_measure="ssim+gms", smoothing_sigma=0))
    assert not torch.allclose(plain, combined)
    smooth = anomaly_map(images32, reconstruction, DetectionSettings(anomaly_measure="ssim", smoothing_sigma=4))
    assert smooth.std() < plain.std()
    same = anomaly_map(images32, images32, DetectionSettings())
    assert same.abs().max() < 1e-5


def test_autoencoder_detection(autoencoder):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    result = detect_by_autoencoder(autoencoder, images, DetectionSettings(iterations=5))
    assert len(result.reconstructions) == 1
    assert result.anomaly_map.shape == (2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(result.reconstructions[0], autoencoder(images))
    with pytest.raises(ValueError, match="32x32"):
        detect_by_autoencoder(autoencoder, torch.rand(1, 3, 64, 64))


def test_scores_ignore_the_frame_outside_the_region(unet, autoencoder, images32):
    region = torch.zeros(1, 1, 32, 32)
    region[..., 8:24, 4:28] = 1
    result = detect_by_inpainting(unet, images32, DetectionSettings(iterations=1, ssim_threshold=0.7), region=region)
    for t, amap in enumerate(result.anomaly_maps):
        assert torch.equal(result.step_scores[t], amap[..., 8:24, 4:28].flatten(1).amax(1))
    maps = torch.zeros(2, 1, 32, 32)
    maps[0, :, 0, 0] = 5.0  # outside the region: not scored
    maps[1, :, 10, 10] = 1.0
    assert image_scores(maps, region).tolist() == [0.0, 1.0]
    assert detect_by_autoencoder(autoencoder, images32, region=region).region is region


def test_detector_fits_a_wide_image_and_scores_and_crops_the_image_alone(unet):
    from i3ad.calibration import Calibration
    from i3ad.detector import AnomalyDetector
    from i3ad.preprocessing import Preprocessing

    preprocessing = Preprocessing(image_size=32, channels=3, geometry="fit")
    settings = DetectionSettings(iterations=1, ssim_threshold=0.7, subtract_normal_error=False)
    detector = AnomalyDetector(unet, preprocessing, settings, Calibration(0.7, None, [1.0, 1.0], 1), "w", "i3ad")
    image = torch.rand(3, 12, 40, generator=torch.Generator().manual_seed(5))
    result = detector.detect(image)
    top, left, height, width = preprocessing.content_box(12, 40)
    assert torch.equal(result.region, preprocessing.region(12, 40))
    assert torch.equal(result.scores, result.anomaly_map[..., top : top + height, left : left + width].amax((1, 2, 3)))
    assert detector.crop(result.anomaly_map, image).shape == (1, 1, height, width)


def test_autocast_applies_on_cuda_only_and_refuses_unknown_precisions():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [autocast_for(cuda, p) for p in ("fp32", "bf16", "fp16")] == [None, torch.bfloat16, torch.float16]
    assert autocast_for(cpu, "fp16") is None
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        autocast_for(cuda, "fp8")


@pytest.mark.parametrize(("height", "width"), [(28, 12), (12, 28), (28, 8)])
def test_step0_never_shows_a_pixel_in_its_mirror_image(unet_grey, height, width):
    # A fit frame's fill shows mirror copies of the image's pixels: a hidden pixel must not be seen there either.
    preprocessing = Preprocessing(image_size=32, channels=1, geometry="fit")  # these images fit without resizing
    top, left, _, _ = preprocessing.content_box(height, width)
    region = preprocessing.region(height, width)
    settings = DetectionSettings(step0_masks=4, step0_cell_size=4)
    image = torch.rand(1, height, width, generator=torch.Generator().manual_seed(6))
    before = inpaint_step0(unet_grey, preprocessing(image), settings, region=region)
    leaky_before = inpaint_step0(unet_grey, preprocessing(image), settings)
    leaked = []
    for y, x in [(0, 0), (height - 1, width - 1), (2, 1), (1, 2)]:  # near the image's border: copied into the fill
        changed = image.clone()
        changed[0, y, x] = 1.0 - changed[0, y, x]
        frame = preprocessing(changed)
        after = inpaint_step0(unet_grey, frame, settings, region=region)
        assert torch.equal(after[..., top + y, left + x], before[..., top + y, left + x])
        assert not torch.equal(after, before)
        # Without the region the grid can leave a copy in view, and the pixel's painting reacts to its own value.
        leaky = inpaint_step0(unet_grey, frame, settings)
        leaked.append(not torch.equal(leaky[..., top + y, left + x], leaky_before[..., top + y, left + x]))
    assert any(leaked)  # the check above is sensitive to a leak


def _fit_frames(shapes, seed: int):
    """Grey images of the given shapes in 32-px fit frames, with their regions."""
    preprocessing = Preprocessing(image_size=32, channels=1, geometry="fit")
    generator = torch.Generator().manual_seed(seed)
    frames = torch.cat([preprocessing(torch.rand(1, h, w, generator=generator)) for h, w in shapes])
    return frames, torch.cat([preprocessing.region(h, w) for h, w in shapes])


@pytest.mark.parametrize("painting", ITERATION_PAINTINGS)
def test_iterations_hide_mirror_copies_with_their_pixels(unet_grey, painting, monkeypatch):
    frames, region = _fit_frames([(28, 12), (28, 12)], seed=7)
    sources = pixel_sources(region[:1])  # both frames hold the same box
    tau = ssim_map(frames, inpaint_step0(unet_grey, frames, DetectionSettings(), region=region)).median().item()
    settings = DetectionSettings(iterations=2, ssim_threshold=tau, iteration_painting=painting)
    painted_masks = []

    def recording_paint(model, images, masks, autocast_dtype=None):
        painted_masks.append(masks)
        return paint(model, images, masks, autocast_dtype)

    monkeypatch.setattr(scoring, "paint", recording_paint)
    result = detect_by_inpainting(unet_grey, frames, settings, region=region)
    thresholded = dilate((result.ssim_maps[0] < tau).float(), settings.mask_dilation)
    assert 0 < result.masks[1].mean() < 1
    assert not torch.equal(hide_mirror_copies(thresholded, sources), thresholded)  # the threshold alone leaves copies
    assert len(painted_masks) >= 2  # step 0 and at least one iteration reached the network
    for masks in painted_masks:  # no mask the network is given shows a hidden pixel in its mirror image
        assert torch.equal(hide_mirror_copies(masks, sources), masks)


def test_painting_part_of_a_batch_hides_the_mirror_copies_of_each_painted_image(unet_grey):
    # Three frames with different boxes; image 0's step 0 is perfect, so only images 1 and 2 are painted after it.
    frames, region = _fit_frames([(28, 12), (12, 28), (20, 32)], seed=8)
    step0 = inpaint_step0(unet_grey, frames, DetectionSettings(), region=region)
    step0 = torch.cat([frames[:1], step0[1:]])
    tau = ssim_map(frames[1:], step0[1:]).median().item()
    for painting in ITERATION_PAINTINGS:
        settings = DetectionSettings(iterations=2, ssim_threshold=tau, iteration_painting=painting)
        together = detect_by_inpainting(unet_grey, frames, settings, step0=step0, region=region)
        alone = detect_by_inpainting(unet_grey, frames[1:], settings, step0=step0[1:], region=region[1:])
        for t in (1, 2):
            assert torch.equal(together.reconstructions[t][0], frames[0])
            assert torch.equal(together.masks[t][1:], alone.masks[t])
            torch.testing.assert_close(together.reconstructions[t][1:], alone.reconstructions[t], atol=1e-6, rtol=0)
