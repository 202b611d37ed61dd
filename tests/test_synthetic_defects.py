"""Synthetic defects painted into training images, and how training uses them."""

from __future__ import annotations

import pytest
import torch

import i3ad.training
from i3ad.synthetic_defects import add_synthetic_defects
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
