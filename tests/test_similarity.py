"""SSIM map vs pytorch-msssim, the Gaussian blur, gradient similarity and dilation."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

from i3ad.similarity import dilate, gaussian_blur, gaussian_kernel_1d, gradient_magnitude_similarity, ssim_map

WINDOW = 11
CROP = WINDOW // 2  # pytorch-msssim's valid convolution drops 5 px on each side


def _valid_mean(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean of our full-size map over the region pytorch-msssim's valid convolution covers, per image."""
    return ssim_map(images, reconstructions)[..., CROP:-CROP, CROP:-CROP].mean(dim=(1, 2, 3))


@functools.cache
def _pairs(channels: int):
    generator = torch.Generator().manual_seed(channels)
    size = 40
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    random = torch.rand(2, channels, size, size, generator=generator)
    noisy = (random + 0.2 * torch.randn(random.shape, generator=generator)).clamp(0, 1)
    stripes = (0.5 + 0.4 * torch.sin(20 * x + 5 * y)).expand(2, channels, size, size).clone()
    checker = ((torch.arange(size)[:, None] // 4 + torch.arange(size)[None] // 4) % 2).float()
    checker = checker.expand(2, channels, size, size).clone()
    ramp = x.expand(2, channels, size, size).clone()
    return {
        "random-vs-random": (random, torch.rand(random.shape, generator=generator)),
        "random-vs-noisy": (random, noisy),
        "stripes-vs-blurred": (stripes, gaussian_blur(stripes, 2.0)),
        "checker-vs-shifted": (checker, torch.roll(checker, shifts=2, dims=-1)),
        "ramp-vs-dark": (ramp, 0.5 * ramp),
        "checker-vs-constant": (checker, torch.full_like(checker, 0.3)),
    }


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("case", list(_pairs(3)))
def test_ssim_map_valid_mean_matches_pytorch_msssim(channels, case):
    images, reconstructions = _pairs(channels)[case]
    ours = _valid_mean(images, reconstructions)
    reference = torch.stack(
        [
            ssim(images[i : i + 1], reconstructions[i : i + 1], data_range=1.0, size_average=True, win_size=WINDOW)
            for i in range(len(images))
        ]
    )
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_ssim_map_shape_and_batch_mean_matches():
    images, reconstructions = _pairs(3)["random-vs-noisy"]
    full = ssim_map(images, reconstructions)
    assert full.shape == (2, 1, 40, 40)
    reference = ssim(images, reconstructions, data_range=1.0, size_average=True, win_size=WINDOW)
    assert abs(full[..., CROP:-CROP, CROP:-CROP].mean().item() - reference.item()) < 1e-5


@pytest.mark.parametrize("channels", [1, 3])
def test_identical_images_give_one(channels):
    images = torch.rand(2, channels, 24, 24, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ssim_map(images, images), torch.ones(2, 1, 24, 24), atol=1e-6, rtol=0)
    constant = torch.full((1, channels, 24, 24), 0.7)
    torch.testing.assert_close(ssim_map(constant, constant), torch.ones(1, 1, 24, 24), atol=1e-6, rtol=0)


def test_ssim_map_is_low_where_images_differ():
    images = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    changed = images.clone()
    changed[..., 20:28, 20:28] = 1.0 - changed[..., 20:28, 20:28]
    similarity = ssim_map(images, changed)
    assert similarity[..., 22:26, 22:26].max() < 0.5
    assert similarity[..., :8, :8].min() > 0.999
    assert similarity[..., 40:, 40:].min() > 0.999


def test_ssim_map_rejects_different_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        ssim_map(torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16))


def test_gaussian_kernel_is_normalised_and_symmetric():
    kernel = gaussian_kernel_1d(1.5, 11)
    assert kernel.shape == (11,)
    assert abs(kernel.sum().item() - 1.0) < 1e-6
    torch.testing.assert_close(kernel, kernel.flip(0))
    assert kernel.argmax().item() == 5
    assert gaussian_kernel_1d(2.0).numel() == 2 * 6 + 1


def test_gaussian_blur_keeps_size_and_constants_and_matches_valid_convolution():
    constant = torch.full((2, 3, 20, 20), 0.25)
    torch.testing.assert_close(gaussian_blur(constant, 3.0), constant)
    # sigma so large that the kernel is clamped to the image: still a normalised blur.
    torch.testing.assert_close(gaussian_blur(constant, 8.0), constant)
    images = torch.rand(1, 2, 30, 30, generator=torch.Generator().manual_seed(3))
    # A window wider than the image is built only as wide as the image can use: the same blur, no huge kernel.
    torch.testing.assert_close(gaussian_blur(images, 40.0, 241), gaussian_blur(images, 40.0), atol=1e-6, rtol=0)
    flat = gaussian_blur(images, 1e9)  # a box filter, in no more memory than the image's
    torch.testing.assert_close(flat, images.mean(dim=(2, 3), keepdim=True).expand_as(images), atol=1e-2, rtol=0)
    assert gaussian_blur(images, 0.0) is images
    blurred = gaussian_blur(images, 1.5, 11)
    assert blurred.shape == images.shape
    kernel = gaussian_kernel_1d(1.5, 11)
    window = (kernel[:, None] * kernel[None, :]).expand(2, 1, 11, 11)
    valid = F.conv2d(images, window, groups=2)
    torch.testing.assert_close(blurred[..., 5:-5, 5:-5], valid, atol=1e-6, rtol=0)


def test_gradient_magnitude_similarity():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    same = gradient_magnitude_similarity(images, images)
    assert same.shape == (2, 1, 32, 32)
    torch.testing.assert_close(same, torch.ones_like(same))
    flat = torch.full_like(images, 0.5)
    different = gradient_magnitude_similarity(images, flat)
    assert different.mean() < 0.5
    assert ((different >= 0) & (different <= 1 + 1e-6)).all()


@pytest.mark.parametrize("side", [97, 100, 255])
def test_gradient_magnitude_similarity_does_not_depend_on_the_far_side(side):
    # A 2 x 2 defect on a flat image scores the same near it whatever the image's side: its coarser scales, brought
    # back to full size, land on it. With sides that halve unevenly (97 -> 49 -> 25 -> 13) they were stretched by
    # 49/97 instead of 1/2 and moved by up to 2 px.
    def similarity(size: int) -> torch.Tensor:
        images = torch.full((1, 1, size, size), 0.5)
        defective = images.clone()
        defective[..., 60:62, 60:62] = 1.0
        return gradient_magnitude_similarity(images, defective)[0, 0, :80, :80]

    torch.testing.assert_close(similarity(side), similarity(96), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sigma", [1e-30, 1e-300, 5e-324])
def test_a_vanishing_sigma_blurs_nothing(sigma):
    images = torch.rand(1, 2, 9, 9, generator=torch.Generator().manual_seed(0))
    # In float32 such a sigma's 2 sigma^2 was 0 and the kernel's centre 0 / 0: every map NaN.
    torch.testing.assert_close(gaussian_blur(images, sigma), images)


def test_dilate():
    masks = torch.zeros(1, 1, 9, 9)
    masks[0, 0, 4, 4] = 1.0
    assert dilate(masks, 0) is masks
    grown = dilate(masks, 1)
    expected = torch.zeros_like(masks)
    expected[0, 0, 3:6, 3:6] = 1.0
    assert torch.equal(grown, expected)
    assert dilate(masks, 2).sum().item() == 25
    corner = torch.zeros(1, 1, 9, 9)
    corner[0, 0, 0, 0] = 1.0
    assert dilate(corner, 2).sum().item() == 9  # clipped at the border, no wrap-around
