"""Synthetic defects painted into training images, and how training uses them."""

from __future__ import annotations

import pytest
import torch

import i3ad.training
from i3ad.synthetic_defects import DEFAULT_LOOKS, DEFECT_LOOKS, add_synthetic_defects
from i3ad.training import TrainConfig, train


def _images(batch: int = 8, channels: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25


def test_no_share_changes_nothing_and_a_full_share_changes_every_image():
    images = _images()
    assert torch.equal(add_synthetic_defects(images, 0.0, torch.Generator().manual_seed(0)), images)
    corrupted = add_synthetic_defects(images, 1.0, torch.Generator().manual_seed(0))
    assert corrupted.shape == images.shape
    assert corrupted.min() >= 0 and corrupted.max() <= 1
    changed = (corrupted - images).abs().flatten(1).amax(dim=1) > 0
    assert changed.all()
    # A defect is local (its soft edge aside): most of each image stays about as it was.
    unchanged_share = ((corrupted - images).abs() < 0.02).float().mean()
    assert unchanged_share > 0.5


@pytest.mark.parametrize("channels", [1, 3])
def test_a_partial_share_leaves_the_other_images_bit_exact(channels):
    images = _images(batch=64, channels=channels)
    corrupted = add_synthetic_defects(images, 0.5, torch.Generator().manual_seed(3))
    changed = (corrupted != images).flatten(1).any(dim=1)
    assert 10 < int(changed.sum()) < 54
    assert torch.equal(corrupted[~changed], images[~changed])


def test_no_share_draws_no_random_numbers():
    generator = torch.Generator().manual_seed(4)
    state = generator.get_state()
    add_synthetic_defects(_images(), 0.0, generator)
    assert torch.equal(generator.get_state(), state)


def test_defects_bring_foreign_texture_and_tinted_brightness():
    # Two flat colour images: where a defect fills image 0 with image 1's texture, image 0 moves towards image 1's
    # colour by the same fraction in every channel; a tinted brightness change moves its channels by other amounts.
    own, other = torch.tensor([0.3, 0.3, 0.3]), torch.tensor([0.9, 0.5, 0.1])
    images = torch.stack([own.view(3, 1, 1).expand(3, 32, 32), other.view(3, 1, 1).expand(3, 32, 32)])
    foreign = tinted = False
    for seed in range(40):
        difference = (add_synthetic_defects(images, 1.0, torch.Generator().manual_seed(seed)) - images)[0]
        strongest = difference.abs().amax(dim=0).flatten().argmax()
        shift = difference.flatten(1)[:, strongest]
        fractions = shift / (other - own)
        towards_other = bool(fractions.min() > 0.05 and fractions.max() - fractions.min() < 1e-3)
        foreign |= towards_other
        tinted |= not towards_other and bool(shift.max() - shift.min() > 0.01)
    assert foreign and tinted


def _total_variation(images: torch.Tensor) -> torch.Tensor:
    """Per image: the mean absolute difference between neighbouring pixels."""
    return (images.diff(dim=-1).abs().mean(dim=(1, 2, 3)) + images.diff(dim=-2).abs().mean(dim=(1, 2, 3))) / 2


def test_lost_texture_defects_smooth_the_texture_and_keep_a_flat_surface_as_it_is():
    flat = torch.full((4, 3, 32, 32), 0.4)
    assert torch.allclose(add_synthetic_defects(flat, 1.0, torch.Generator().manual_seed(0), ("blur",)), flat)
    images = _images()
    blurred = add_synthetic_defects(images, 1.0, torch.Generator().manual_seed(0), ("blur",))
    assert (_total_variation(blurred) < _total_variation(images)).all()
    # The texture goes, its brightness stays (a shift would move it).
    assert (blurred.mean(dim=(1, 2, 3)) - images.mean(dim=(1, 2, 3))).abs().max() < 0.02


@pytest.mark.parametrize(("channels", "total_change"), [(1, 357.13058), (3, 953.48170)])
def test_the_default_looks_draw_the_defects_they_drew_before_a_third_look_existed(channels, total_change):
    # The shipped networks were trained with these exact defects: the sums were measured with the code of commit
    # 333c540, before --synthetic-defect-looks; any change to the random numbers drawn moves them by far more.
    images = torch.rand(16, channels, 48, 48, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    corrupted = add_synthetic_defects(images, 0.6, torch.Generator().manual_seed(11))
    assert float((corrupted - images).abs().double().sum()) == pytest.approx(total_change, rel=1e-5)


def test_a_third_look_adds_lost_texture_to_some_images_and_the_order_of_looks_does_not_matter():
    images = _images(batch=64)
    default = add_synthetic_defects(images, 1.0, torch.Generator().manual_seed(2))
    reordered = add_synthetic_defects(images, 1.0, torch.Generator().manual_seed(2), ("shift", "foreign"))
    assert torch.equal(default, reordered)
    with_blur = add_synthetic_defects(images, 1.0, torch.Generator().manual_seed(2), ("foreign", "shift", "blur"))
    assert torch.equal(
        with_blur, add_synthetic_defects(images, 1.0, torch.Generator().manual_seed(2), DEFECT_LOOKS[::-1])
    )
    blurred = add_synthetic_defects(images, 1.0, torch.Generator().manual_seed(2), ("blur",))
    # With three looks some images lose texture (lower variation than the default's), the others keep theirs.
    smoother = _total_variation(with_blur) < _total_variation(default) - 1e-3
    assert 5 < int(smoother.sum()) < 59
    assert _total_variation(blurred).mean() < _total_variation(with_blur).mean() < _total_variation(default).mean()
    assert TrainConfig(synthetic_defects=0.5, synthetic_defect_looks=("blur", "foreign")).synthetic_defect_looks == (
        "foreign",
        "blur",
    )
    assert TrainConfig(synthetic_defect_looks=("shift", "foreign")).synthetic_defect_looks == DEFAULT_LOOKS


@pytest.mark.parametrize("looks", [(), ("blur", "blur"), ("smudge",)])
def test_unknown_repeated_or_no_looks_are_refused(looks):
    with pytest.raises(ValueError, match="looks"):
        add_synthetic_defects(_images(), 0.5, looks=looks)
    with pytest.raises(ValueError, match="looks"):
        TrainConfig(synthetic_defects=0.5, synthetic_defect_looks=looks)


def test_looks_without_synthetic_defects_are_refused():
    with pytest.raises(ValueError, match="no synthetic defects"):
        TrainConfig(synthetic_defect_looks=("blur",))


def test_half_precision_images_stay_half_precision():
    images = _images().half()
    assert add_synthetic_defects(images, 1.0, torch.Generator().manual_seed(0)).dtype == torch.float16


def test_the_same_seed_gives_the_same_defects():
    images = _images()
    first = add_synthetic_defects(images, 0.7, torch.Generator().manual_seed(5))
    again = add_synthetic_defects(images, 0.7, torch.Generator().manual_seed(5))
    other = add_synthetic_defects(images, 0.7, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_a_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ValueError, match="share"):
        add_synthetic_defects(_images(), share)
    with pytest.raises(ValueError, match="share"):
        TrainConfig(synthetic_defects=share)


def test_the_autoencoder_baseline_does_not_take_synthetic_defects():
    with pytest.raises(ValueError, match="autoencoder"):
        TrainConfig(model="ae", synthetic_defects=0.5)


def test_hidden_pixels_learn_the_clean_image_and_kept_ones_the_corrupted_input(monkeypatch):
    seen = {}
    paint = i3ad.training.paint
    loss = i3ad.training.reconstruction_loss

    def recording_paint(network, inputs, masks, autocast_dtype=None):
        seen["inputs"], seen["masks"] = inputs, masks
        return paint(network, inputs, masks, autocast_dtype)

    def recording_loss(reconstructions, targets, l2_weight):
        seen["targets"] = targets
        return loss(reconstructions, targets, l2_weight)

    monkeypatch.setattr(i3ad.training, "paint", recording_paint)
    monkeypatch.setattr(i3ad.training, "reconstruction_loss", recording_loss)
    images = _images(batch=1)
    config = TrainConfig(steps=1, batch_size=4, base_width=8, synthetic_defects=1.0)
    train(images, config, progress=False)
    clean = images.expand(4, -1, -1, -1)
    inputs, masks, targets = seen["inputs"], seen["masks"] > 0.5, seen["targets"]
    assert not torch.equal(inputs, clean)
    hidden = masks.expand_as(targets)
    assert torch.equal(targets[hidden], clean[hidden])
    assert torch.equal(targets[~hidden], inputs[~hidden])
