"""Preprocessing: resizing, range, contrast standardisation and input checks."""

from __future__ import annotations

import pytest
import torch

from i3ad.preprocessing import Preprocessing


@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_dtype_and_range(channels):
    preprocessing = Preprocessing(image_size=32, channels=channels)
    image = torch.rand(channels, 50, 70, generator=torch.Generator().manual_seed(0)).double()
    out = preprocessing(image)
    assert out.shape == (1, channels, 32, 32)
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    batch = preprocessing(torch.rand(3, channels, 20, 20))
    assert batch.shape == (3, channels, 32, 32)


def test_right_size_passes_unchanged_and_resizing_keeps_the_mean():
    preprocessing = Preprocessing(image_size=16, channels=3)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(preprocessing(image), image)
    large = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    small = preprocessing(large)
    assert abs(small.mean().item() - large.mean().item()) < 0.01
    constant = torch.full((1, 3, 40, 24), 0.3)
    torch.testing.assert_close(preprocessing(constant), torch.full((1, 3, 16, 16), 0.3))


def test_out_of_range_values_are_refused_and_resizing_overshoot_is_clamped():
    preprocessing = Preprocessing(image_size=16, channels=1)
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\], got values from -1 to 2"):
        preprocessing(torch.linspace(-1, 2, 256).view(1, 1, 16, 16))
    # A hard black-white edge rings when shrunk with antialiasing: the frame still stays in [0, 1].
    edges = (torch.arange(64) % 2).float().view(1, 1, 1, 64).expand(1, 1, 48, 64)
    out = preprocessing(edges)
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_standardize_gives_target_mean_and_std(seed):
    generator = torch.Generator().manual_seed(seed)
    # Dim, low-contrast images with different brightness: standardisation equalises them.
    images = 0.2 + 0.05 * torch.rand(2, 3, 32, 32, generator=generator)
    images[1] += 0.3
    out = Preprocessing(image_size=32, channels=3, normalization="standardize")(images)
    for image in out:
        assert image.mean().item() == pytest.approx(0.5, abs=1e-4)
        assert image.std().item() == pytest.approx(0.125, abs=1e-4)
    plain = Preprocessing(image_size=32, channels=3)(images)
    assert plain[0].mean().item() == pytest.approx(images[0].mean().item(), abs=1e-6)


def test_standardize_of_a_flat_image_is_finite():
    out = Preprocessing(image_size=16, channels=1, normalization="standardize")(torch.full((1, 1, 16, 16), 0.8))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full_like(out, 0.5), atol=1e-3, rtol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_refused(bad):
    image = torch.rand(3, 20, 20)
    image[1, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        Preprocessing(image_size=16, channels=3)(image)


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        Preprocessing(image_size=16, channels=3)(torch.rand(1, 20, 20))
    with pytest.raises(ValueError):
        Preprocessing(image_size=16, channels=1)(torch.rand(20, 20))


@pytest.mark.parametrize(
    "kwargs", [{"image_size": 8}, {"channels": 2}, {"normalization": "minmax"}, {"image_size": 15}]
)
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        Preprocessing(**kwargs)


def test_settings_round_trip():
    preprocessing = Preprocessing(image_size=64, channels=1, normalization="standardize")
    assert Preprocessing(**preprocessing.to_dict()) == preprocessing


# --- geometry "fit" ------------------------------------------------------------------------------------------------


def test_fit_keeps_the_aspect_ratio_inside_a_margin_and_mirrors_the_rest():
    import torch.nn.functional as F

    preprocessing = Preprocessing(image_size=64, channels=1, geometry="fit")
    image = torch.rand(1, 1, 30, 90, generator=torch.Generator().manual_seed(3))
    top, left, height, width = preprocessing.content_box(30, 90)
    assert (left, width) == (4, 56)  # the longer side fills the frame less a 4-px margin (1/16 of 64) on each side
    assert height == round(30 * 56 / 90) and top == (64 - height) // 2
    frame = preprocessing(image)
    assert frame.shape == (1, 1, 64, 64)
    resized = F.interpolate(image, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(preprocessing.crop(frame, 30, 90), resized.clamp(0, 1))
    # The fill is the image's mirror image: the row above the content repeats the content's second row.
    assert torch.equal(frame[..., top - 1, left : left + width], frame[..., top + 1, left : left + width])
    assert torch.equal(frame[..., top : top + height, left - 1], frame[..., top : top + height, left + 1])
    region = preprocessing.region(30, 90)
    assert region.shape == (1, 1, 64, 64) and region.sum() == height * width
    assert torch.equal(preprocessing.crop(region, 30, 90), torch.ones(1, 1, height, width))


def test_fit_fills_frames_far_wider_than_the_image_and_standardises_the_image_alone():
    preprocessing = Preprocessing(image_size=64, channels=3, normalization="standardize", geometry="fit")
    # 8 x 56 and 56 x 8: the content is 8 px high (wide), so the fill reflects it again and again.
    for height, width in [(8, 56), (56, 8)]:
        image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(4))
        frame = preprocessing(image)
        assert frame.shape == (1, 3, 64, 64) and torch.isfinite(frame).all()
        content = preprocessing.crop(frame, height, width)
        assert content.mean().item() == pytest.approx(0.5, abs=0.02)


def test_stretch_fills_the_frame():
    preprocessing = Preprocessing(image_size=16, channels=3)
    assert preprocessing.content_box(30, 90) == (0, 0, 16, 16)
    assert torch.equal(preprocessing.region(30, 90), torch.ones(1, 1, 16, 16))
    frames = torch.rand(2, 3, 16, 16)
    assert torch.equal(preprocessing.crop(frames, 30, 90), frames)
    with pytest.raises(ValueError, match="geometry"):
        Preprocessing(geometry="crop")


def test_an_image_too_elongated_to_fit_is_refused_not_scored_as_a_sliver():
    fit = Preprocessing(image_size=256, channels=1, geometry="fit")
    assert fit.content_box(200, 600)[2:] == (75, 224)
    with pytest.raises(
        ValueError, match=r"a 3000x20 image is too elongated .* short side would be 1 px \(at least 8\)"
    ):
        fit(torch.rand(1, 20, 3000))
    assert Preprocessing(image_size=256, channels=1).content_box(20, 3000) == (0, 0, 256, 256)  # stretch has no limit


def test_stretch_warns_about_an_image_it_distorts_and_fit_never_does():
    stretch, fit = Preprocessing(channels=1), Preprocessing(channels=1, geometry="fit")
    for height, width in [(256, 256), (200, 300), (300, 200)]:  # up to 1.5 : 1
        assert stretch.distortion_note(height, width) is None
    assert "this 600x200 image is stretched 3.0-fold" in stretch.distortion_note(200, 600)
    assert "stretched 2.5-fold" in stretch.distortion_note(1000, 400)
    assert fit.distortion_note(200, 600) is None
