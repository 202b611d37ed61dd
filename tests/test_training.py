"""Training configuration, the holdout split, short training runs, the loss, and calibration."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pytorch_msssim import ssim

from i3ad.calibration import (
    MAX_CALIBRATED_ITERATIONS,
    Calibration,
    calibrate_inpainting,
    quantile,
)
from i3ad.models import ConvAutoencoder, InpaintingUNet
from i3ad.normal_error import NormalError
from i3ad.scoring import DetectionSettings, detect_by_inpainting, image_scores, inpaint_step0, paint
from i3ad.similarity import ssim_map
from i3ad.training import (
    TrainConfig,
    augment,
    build_model,
    reconstruction_loss,
    split_holdout,
    steps_within_budget,
    train,
)

# --- holdout split ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "fraction", "held"),
    [(60, 0.1, 6), (10, 0.1, 1), (10, 0.25, 2), (7, 0.5, 3), (9, 0.9, 4), (3, 0.01, 1), (20, 0.0, 0), (1, 0.5, 0)],
)
def test_split_holdout_sizes(count, fraction, held):
    train_ids, holdout_ids = split_holdout(count, fraction, seed=0)
    assert len(holdout_ids) == held
    assert len(train_ids) == count - held
    assert sorted(train_ids + holdout_ids) == list(range(count))
    assert train_ids == sorted(train_ids) and holdout_ids == sorted(holdout_ids)


def test_split_holdout_is_deterministic_and_depends_on_the_seed():
    assert split_holdout(50, 0.2, seed=3) == split_holdout(50, 0.2, seed=3)
    assert split_holdout(50, 0.2, seed=3)[1] != split_holdout(50, 0.2, seed=4)[1]
    # Not simply the first or last images.
    holdout = split_holdout(50, 0.2, seed=0)[1]
    assert holdout != list(range(10)) and holdout != list(range(40, 50))


# --- configuration ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": "vae"},
        {"augmentations": ("hflip", "twist")},
        {"steps": 0},
        {"batch_size": 0},
        {"holdout_fraction": 1.0},
        {"holdout_fraction": -0.1},
        {"grid_cell_sizes": ()},
        {"grid_cell_sizes": (8, 0)},
    ],
)
def test_train_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def test_train_config_defaults_and_dict():
    config = TrainConfig(model="ae", augmentations=("hflip", "rot90"))
    data = config.to_dict()
    assert data["model"] == "ae" and data["augmentations"] == ("hflip", "rot90")
    assert TrainConfig(**data) == config


# --- loss and augmentation -------------------------------------------------------------------------------------------


def test_reconstruction_loss_is_documented_ssim_plus_mse():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=generator)
    reconstructions = (images + 0.2 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    expected_ssim = ssim(reconstructions, images, data_range=1.0, size_average=True, win_size=11)
    mse = torch.nn.functional.mse_loss(reconstructions, images)
    loss = reconstruction_loss(reconstructions, images, l2_weight=0.0)
    # Window 11, as the docstring says and as detection's SSIM map uses (window 9 gives another value).
    assert loss.item() == pytest.approx(1 - expected_ssim.item(), abs=1e-6)
    assert abs(1 - ssim(reconstructions, images, data_range=1.0, win_size=9).item() - loss.item()) > 1e-4
    weighted = reconstruction_loss(reconstructions, images, l2_weight=2.0)
    assert weighted.item() == pytest.approx(1 - expected_ssim.item() + 2 * mse.item(), abs=1e-6)
    assert reconstruction_loss(images, images, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_reconstruction_loss_on_small_images_uses_an_odd_window():
    images = torch.rand(1, 1, 10, 10, generator=torch.Generator().manual_seed(1))
    loss = reconstruction_loss(images.flip(-1), images, 0.0)
    expected = 1 - ssim(images.flip(-1), images, data_range=1.0, win_size=9)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_augment():
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(augment(images, (), torch.Generator().manual_seed(0)), images)
    flipped = augment(images, ("hflip",), torch.Generator().manual_seed(0))
    changed = [not torch.equal(a, b) for a, b in zip(flipped, images, strict=True)]
    assert any(changed) and not all(changed)
    for a, b, did in zip(flipped, images, changed, strict=True):
        assert torch.equal(a, b.flip(-1) if did else b)
    turned = augment(images, ("hflip", "vflip", "rot90"), torch.Generator().manual_seed(1))
    assert turned.shape == images.shape
    for a, b in zip(turned, images, strict=True):
        # One of the eight flips / quarter turns of its own input.
        variants = [v for r in (b, b.rot90(1, dims=(-2, -1))) for v in (r, r.flip(-1), r.flip(-2), r.flip(-1, -2))]
        assert any(torch.equal(a, v) for v in variants)
    assert any(not torch.equal(a, b) for a, b in zip(turned, images, strict=True))


# --- short training runs ---------------------------------------------------------------------------------------------


def test_train_inpainting_a_few_steps(images32):
    config = TrainConfig(steps=4, batch_size=2, base_width=8, log_every=2, augmentations=("hflip",))
    model, log = train(images32, config, progress=False)
    assert isinstance(model, InpaintingUNet)
    assert not model.training
    assert model.config["base_width"] == 8 and model.config["channels"] == 3
    assert [entry["step"] for entry in log] == [2, 4]
    assert all(math.isfinite(entry["loss"]) and entry["loss"] >= 0 for entry in log)
    # The weights moved away from a fresh initialisation with the same seed.
    torch.manual_seed(config.seed)
    fresh = InpaintingUNet(channels=3, base_width=8)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True))


def test_training_never_shows_a_hidden_pixel_in_its_mirror_image(monkeypatch):
    # Images of distinct pixel values, fitted into frames whose fill copies them: whatever training's flips, turns and
    # masks do, a hidden pixel's value must not be visible anywhere in the network's input.
    from i3ad import training
    from i3ad.preprocessing import Preprocessing

    preprocessing = Preprocessing(image_size=32, channels=1, geometry="fit")
    shapes = [(28, 12), (12, 28), (28, 8)]  # they fit their frames unresized: every pixel keeps its value
    generator = torch.Generator().manual_seed(0)
    images = torch.cat(
        [
            preprocessing(0.1 + 0.8 * torch.randperm(h * w, generator=generator).view(1, h, w) / (h * w))
            for h, w in shapes
        ]
    )
    regions = torch.cat([preprocessing.region(h, w) for h, w in shapes])
    seen = []

    def recording_paint(network, inputs, masks, autocast_dtype=None):
        seen.append((inputs.detach().clone(), masks.clone()))
        return paint(network, inputs, masks, autocast_dtype)

    monkeypatch.setattr(training, "paint", recording_paint)
    augmentations = ("hflip", "vflip", "rot90")
    config = TrainConfig(steps=3, batch_size=8, base_width=8, width_multipliers=(1, 2), augmentations=augmentations)
    train(images, config, regions=regions, progress=False)
    assert len(seen) == 3
    for inputs, masks in seen:
        for frame, mask in zip(inputs, masks, strict=True):
            hidden, visible = frame[mask.expand_as(frame) > 0.5], frame[mask.expand_as(frame) < 0.5]
            assert len(hidden) and len(visible)
            assert not torch.isin(hidden, visible).any()
    # Without the regions the fill shows copies of hidden pixels: the check above would catch it.
    seen.clear()
    train(images, config, progress=False)
    assert any(
        torch.isin(frame[mask.expand_as(frame) > 0.5], frame[mask.expand_as(frame) < 0.5]).any()
        for inputs, masks in seen
        for frame, mask in zip(inputs, masks, strict=True)
    )


def test_train_a_network_without_normalisation_from_residual_branches_at_zero(images32):
    fresh = InpaintingUNet(channels=3, base_width=8, width_multipliers=(1, 2), norm_layer="none")
    assert not any(isinstance(module, torch.nn.GroupNorm) for module in fresh.modules())
    # Each residual block starts as its skip path alone: its branch's last convolution is zero.
    for block in [*fresh.down_blocks, *fresh.bottleneck, *fresh.up_blocks]:
        assert not block.body[-1].weight.any() and not block.body[-1].bias.any()
    config = TrainConfig(steps=3, batch_size=2, base_width=8, width_multipliers=(1, 2), norm_layer="none")
    model, log = train(images32, config, progress=False)
    assert model.config["norm_layer"] == "none" and all(math.isfinite(entry["loss"]) for entry in log)
    assert any(block.body[-1].weight.any() for block in model.down_blocks)  # the branches learn
    stored = TrainConfig(**json.loads(json.dumps(config.to_dict())))
    assert build_model(stored, channels=3, image_size=32).config == model.config


def test_a_batch_norm_network_learns_its_statistics_and_paints_each_image_alone(images32):
    config = TrainConfig(steps=3, batch_size=4, base_width=8, width_multipliers=(1, 2), norm_layer="batch")
    model, _ = train(images32, config, progress=False)
    norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert norms and not any(isinstance(module, torch.nn.GroupNorm) for module in model.modules())
    assert all(int(norm.num_batches_tracked) == 3 and norm.running_var.ne(1).any() for norm in norms)
    # Returned for detection: the learnt statistics, not the batch's, so an image paints the same in any company.
    assert not model.training
    images = torch.cat([images32, images32.flip(-1)])
    masks = (torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    with torch.no_grad():
        together = model(images, masks)
        alone = model(images[:1], masks[:1])
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-5)


def _normalised(module: torch.nn.Module) -> bool:
    return any(isinstance(layer, torch.nn.GroupNorm) for layer in module.modules())


def test_the_first_levels_of_a_network_can_go_without_normalisation(images32):
    config = TrainConfig(steps=3, batch_size=2, base_width=8, width_multipliers=(1, 2, 4), norm_free_levels=1)
    model, log = train(images32, config, progress=False)
    assert model.config["norm_free_levels"] == 1 and all(math.isfinite(entry["loss"]) for entry in log)
    # Level 0 (full resolution) on the way down and up, and the head, go without; the deeper levels keep it.
    down, up = model.down_blocks, model.up_blocks  # up_blocks run from level 1 back to level 0
    assert not any(_normalised(block) for block in [down[0], up[1], model.head])
    assert all(_normalised(block) for block in [down[1], down[2], model.bottleneck, up[0]])
    stored = TrainConfig(**json.loads(json.dumps(config.to_dict())))
    assert build_model(stored, channels=3, image_size=32).config == model.config
    assert "norm_free_levels" not in InpaintingUNet(channels=3, base_width=8, width_multipliers=(1, 2)).config


def test_a_full_resolution_path_belongs_to_the_first_level_and_the_bottleneck_to_the_last():
    folded = InpaintingUNet(base_width=8, width_multipliers=(1, 2), patch_size=2, full_res_width=4, norm_free_levels=1)
    assert not _normalised(folded.full_res_head) and _normalised(folded.bottleneck)
    assert not _normalised(InpaintingUNet(base_width=8, width_multipliers=(1, 2), norm_free_levels=2))


def test_a_wrong_count_of_levels_without_normalisation_is_refused():
    for damaged in [-1, 3, 1.0, 0.0, True, False, "1", None]:
        with pytest.raises(ValueError, match="norm_free_levels must be a whole number from 0 to the 2 levels"):
            InpaintingUNet(channels=3, base_width=8, width_multipliers=(1, 2), norm_free_levels=damaged)
        # Refused before any training starts, for either network.
        with pytest.raises(ValueError, match="norm_free_levels must be a whole number from 0 to the 2 levels"):
            TrainConfig(model="ae", width_multipliers=(1, 2), norm_free_levels=damaged)


def test_an_unknown_norm_layer_is_refused():
    for damaged in ["layer", "", None, False]:
        with pytest.raises(ValueError, match="norm_layer must be one of group, batch, none"):
            InpaintingUNet(channels=3, base_width=8, norm_layer=damaged)


def test_train_a_folded_network_of_other_widths(images32):
    config = TrainConfig(steps=2, batch_size=2, base_width=8, width_multipliers=(1, 2), patch_size=2, full_res_width=4)
    model, _ = train(images32, config, progress=False)
    assert model.config["width_multipliers"] == [1, 2] and model.config["patch_size"] == 2
    assert model.patch_size == 2 and model.config["full_res_width"] == 4
    # The configuration as detector.json stores it (tuples become lists) builds the same network.
    stored = TrainConfig(**json.loads(json.dumps(config.to_dict())))
    assert build_model(stored, channels=3, image_size=32).config == model.config


def test_train_autoencoder_a_few_steps():
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    config = TrainConfig(model="ae", steps=3, batch_size=2, base_width=8, latent_dim=16, log_every=1)
    model, log = train(images, config, progress=False)
    assert isinstance(model, ConvAutoencoder)
    assert model.config == {"channels": 1, "image_size": 32, "base_width": 8, "latent_dim": 16}
    assert len(log) == 3 and all(math.isfinite(entry["loss"]) for entry in log)


def test_training_is_reproducible_whatever_the_callers_random_state(images32):
    config = TrainConfig(steps=2, batch_size=2, base_width=8, log_every=1)
    torch.manual_seed(123)
    _, first = train(images32, config, progress=False)
    assert torch.initial_seed() == 123  # the caller's random numbers are left alone
    torch.manual_seed(456)
    _, second = train(images32, config, progress=False)
    assert [e["loss"] for e in first] == pytest.approx([e["loss"] for e in second], abs=1e-6)


@pytest.mark.slow
def test_compiled_training_follows_eager_training_and_returns_the_plain_model(images32):
    eager_config = TrainConfig(steps=2, batch_size=2, base_width=8, log_every=1)
    _, eager = train(images32, eager_config, progress=False)
    model, compiled = train(images32, TrainConfig(**{**eager_config.to_dict(), "compile": True}), progress=False)
    assert [e["loss"] for e in compiled] == pytest.approx([e["loss"] for e in eager], abs=1e-4)
    assert isinstance(model, InpaintingUNet) and not any(k.startswith("_orig_mod") for k in model.state_dict())


@pytest.mark.parametrize(
    ("seconds_per_step", "elapsed", "expected"),
    [
        (0.1, 6.0, 70 + int((57.0 - 6.0) / 0.1)),  # 95 % of one minute, less what has run
        (0.001, 6.0, 1000),  # capped at config.steps
        (10.0, 70.0, 70),  # over budget already: never below the steps already taken
    ],
)
def test_steps_within_budget(seconds_per_step, elapsed, expected):
    config = TrainConfig(steps=1000, max_minutes=1.0)
    assert steps_within_budget(seconds_per_step, elapsed, config) == expected


class FakeClock:
    """time.perf_counter for the training loop: each reading is ``tick`` seconds after the last one, so that the
    time-budget logic is tested independently of how busy the machine is."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


@pytest.mark.parametrize(("tick", "stops_early"), [(0.001, False), (0.5, True)])
def test_a_time_budget_fits_the_step_count_or_stops_the_run(images32, monkeypatch, tick, stops_early):
    monkeypatch.setattr("i3ad.training.time", FakeClock(tick))
    config = TrainConfig(steps=100_000, batch_size=2, base_width=4, log_every=10, max_minutes=0.01)
    _, log = train(images32, config, progress=False)
    losses = [entry for entry in log if "loss" in entry]
    if stops_early:  # the clock ran out before the timed steps were over: stopped at the limit, still logged
        assert log[-1]["stopped_early_at_step"] == losses[-1]["step"] < 100_000
        return
    budget = next(entry for entry in log if "steps_within_budget" in entry)
    assert 70 < budget["steps_within_budget"] < 100_000
    assert budget["seconds_per_step"] == pytest.approx(tick)  # one clock reading per step
    assert losses[-1]["step"] == budget["steps_within_budget"]  # the run ends where its schedule does


def test_a_time_budget_stops_a_run_too_short_to_be_timed_after_the_step_that_overran_it(images32, monkeypatch):
    monkeypatch.setattr("i3ad.training.time", FakeClock(0.5))
    # 60 steps are fewer than the timing window, and no loss is logged before the end: only the hard limit applies.
    config = TrainConfig(steps=60, batch_size=2, base_width=4, log_every=100, max_minutes=0.01)
    _, log = train(images32, config, progress=False)
    assert log[-1] == {"stopped_early_at_step": 2, "reason": "max_minutes=0.01"}  # 1.0 s > 0.6 s after step 2
    assert log[-2]["step"] == 2  # the last loss is logged with it


def test_training_without_images_fails():
    with pytest.raises(ValueError, match="no training images"):
        train(torch.empty(0, 3, 32, 32), TrainConfig(steps=1, base_width=8), progress=False)


def test_training_refuses_regions_that_do_not_match_the_images(images32):
    with pytest.raises(ValueError, match="do not match images"):
        train(images32, TrainConfig(steps=1, base_width=8), regions=torch.ones(1, 1, 32, 32), progress=False)


def test_diverging_training_is_reported(images32):
    config = TrainConfig(steps=2, batch_size=2, base_width=8, log_every=1)
    with pytest.raises(FloatingPointError, match="diverged"):
        train(images32 * float("nan"), config, progress=False)


# --- calibration -----------------------------------------------------------------------------------------------------


def test_quantile_nearest_rank():
    values = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])
    assert quantile(values, 0.0) == 1.0
    assert quantile(values, 1.0) == 5.0
    assert quantile(values, 0.5) == 3.0
    assert quantile(values, 0.26) == 2.0  # rank round(0.26 * 4) = 1
    assert quantile(torch.arange(101.0).view(1, 1, 101), 0.01) == 1.0


def _thresholds_scored_against_the_others(unet, images, run, region=None) -> list[float]:
    """The score thresholds of two held-out images when each is scored against the other one's normal error (its
    own included, it would partly subtract itself and set the thresholds too low)."""
    raw = detect_by_inpainting(unet, images, run, region=region).anomaly_maps

    def scores(i: int) -> torch.Tensor:
        other = NormalError.from_mean_maps(torch.stack([step[1 - i] for step in raw]))
        return detect_by_inpainting(unet, images[i : i + 1], run, normal_error=other, region=region).step_scores[:, 0]

    return torch.maximum(scores(0), scores(1)).tolist()


def test_calibrate_inpainting(unet, images32):
    settings = DetectionSettings(ssim_threshold=0.5)
    calibration = calibrate_inpainting(unet, images32, settings, ssim_quantile=0.05)
    step0 = inpaint_step0(unet, images32, settings)
    similarity = ssim_map(images32, step0).flatten()
    tau = calibration.ssim_threshold
    assert tau == quantile(similarity, 0.05)
    share_below = (similarity < tau).float().mean().item()
    assert share_below <= 0.05 + 1e-9
    assert (similarity <= tau).float().mean().item() >= 0.05
    assert calibration.ssim_quantile == 0.05 and calibration.holdout_images == 2
    assert len(calibration.score_thresholds) == MAX_CALIBRATED_ITERATIONS + 1
    run = settings.with_(ssim_threshold=tau, iterations=MAX_CALIBRATED_ITERATIONS)
    raw = detect_by_inpainting(unet, images32, run)
    # The normal error is the held-out images' mean map of every step; the thresholds are set on the excess over it.
    expected_normal = NormalError.from_mean_maps(torch.stack([m.mean(dim=0) for m in raw.anomaly_maps]))
    assert torch.allclose(calibration.normal_error.maps, expected_normal.maps, atol=1e-6)
    assert calibration.score_thresholds == pytest.approx(
        _thresholds_scored_against_the_others(unet, images32, run), abs=1e-6
    )
    without = calibrate_inpainting(unet, images32, settings.with_(subtract_normal_error=False), ssim_quantile=0.05)
    assert without.normal_error is None
    assert without.score_thresholds == pytest.approx(raw.step_scores.amax(dim=1).tolist(), abs=1e-6)


def test_calibrate_inpainting_can_keep_tau(unet, images32):
    calibration = calibrate_inpainting(unet, images32, DetectionSettings(ssim_threshold=0.3), ssim_quantile=None)
    assert calibration.ssim_threshold == 0.3 and calibration.ssim_quantile is None
    with pytest.raises(ValueError, match="held-out"):
        calibrate_inpainting(unet, images32[:0], DetectionSettings())


def test_score_threshold_per_iteration_count():
    steps = Calibration(0.5, 0.01, [0.1, 0.2, 0.3], 4)
    assert steps.score_threshold(0) == 0.1
    assert steps.score_threshold(2) == 0.3
    assert steps.score_threshold(50) == 0.3  # beyond the calibrated range: the last one
    for thresholds in ([], [float("nan")], ["0.3"], "0.3"):
        with pytest.raises(ValueError, match="score_thresholds must be a non-empty list of finite numbers"):
            Calibration(0.5, 0.01, thresholds, 4)


def test_calibration_uses_only_the_images_region(unet, images32):
    region = torch.zeros(1, 1, 32, 32)
    region[..., 4:28, 10:22] = 1
    regions = region.expand(2, -1, -1, -1)
    settings = DetectionSettings(ssim_threshold=0.5)
    calibration = calibrate_inpainting(unet, images32, settings, ssim_quantile=0.05, regions=regions)
    similarity = ssim_map(images32, inpaint_step0(unet, images32, settings, region=regions))
    assert calibration.ssim_threshold == quantile(similarity[regions > 0.5], 0.05)
    run = settings.with_(ssim_threshold=calibration.ssim_threshold, iterations=MAX_CALIBRATED_ITERATIONS)
    expected = _thresholds_scored_against_the_others(unet, images32, run, region)
    assert calibration.score_thresholds == pytest.approx(expected, abs=1e-6)


def test_a_category_of_wide_images_trains_and_evaluates_in_the_fit_geometry(tmp_path, monkeypatch):
    from PIL import Image

    from i3ad import evaluation, pipeline
    from i3ad.data import index_category
    from i3ad.pipeline import evaluate_detector, holdout_images, holdout_regions, load_test_set, train_category
    from i3ad.synthetic import make_synthetic_category

    root = make_synthetic_category(tmp_path, "wide", size=32, train=10, test_good=2, test_per_defect=2)
    for path in root.rglob("*.png"):  # every image and mask becomes 3 times as wide as high
        with Image.open(path) as image:
            image.resize((96, 32), Image.NEAREST).save(path)
    index = index_category(tmp_path, "wide")
    config = TrainConfig(steps=3, batch_size=4, base_width=8, holdout_fraction=0.2)
    box_pixels = 28 * round(32 * 28 / 96)  # the image's share of its 32-px frame (the 2-px margin aside)
    # Training and evaluation are given the regions, so that their masks hide the mirror copies on the fill.
    trained_with, step0_regions = [], []
    monkeypatch.setattr(
        pipeline, "train", lambda *a, regions, **k: trained_with.append(regions) or train(*a, regions=regions, **k)
    )
    monkeypatch.setattr(
        evaluation,
        "inpaint_step0",
        lambda *a, region, **k: step0_regions.append(region) or inpaint_step0(*a, region=region, **k),
    )
    detector = train_category(index, config, name="i3ad", image_size=32, progress=False)  # geometry "auto"
    assert detector.preprocessing.geometry == "fit" and detector.calibration.holdout_images == 2
    assert len(trained_with) == 1 and trained_with[0].shape == (8, 1, 32, 32)
    assert (trained_with[0].flatten(1).sum(dim=1) == box_pixels).all()
    test = load_test_set(index, detector.preprocessing)
    assert test.regions is not None and test.regions[0, 0].sum() == box_pixels
    holdout, regions = holdout_images(detector, index), holdout_regions(detector, index)
    table = evaluate_detector(detector, test, thresholds=[], max_iterations=1, holdout=holdout, holdout_regions=regions)
    assert len(table) == 4 and table["pixel_auroc"].notna().all()
    assert torch.equal(torch.cat(step0_regions), torch.cat([test.regions, regions]))
    # Without their regions the held-out images' masks would leave mirror copies in view: refused, not mis-scored.
    with pytest.raises(ValueError, match="holdout_regions"):
        evaluate_detector(detector, test, thresholds=[], max_iterations=1, holdout=holdout)
    # The benchmark scores an image as the detector does on the file itself.
    maps = torch.cat(
        [
            detector.run(test.images[i : i + 1], region=test.regions[i : i + 1]).anomaly_map
            for i in range(len(test.images))
        ]
    )
    first = detector.detect(detector.read(index.test[0].image))
    assert first.scores.item() == pytest.approx(image_scores(maps, test.regions)[0].item(), abs=1e-5)


@pytest.mark.parametrize("base_width", [6, 12, 20])
def test_any_width_builds_both_networks(base_width):
    # GroupNorm's 8 groups must divide the channels: widths such as 12 or 20 stopped with a GroupNorm error.
    images, masks = torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32)
    with torch.no_grad():
        assert InpaintingUNet(base_width=base_width)(images, masks).shape == images.shape
        assert ConvAutoencoder(image_size=32, base_width=base_width)(images).shape == images.shape
