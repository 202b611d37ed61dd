"""Shared fixtures: small untrained networks, a synthetic category, and quiet, CPU-only settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The tests run against this checkout's i3ad, whether or not it is installed in the environment.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Before anything imports gradio / huggingface_hub: no network calls from the tests.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest
import torch

from i3ad.models import ConvAutoencoder, InpaintingUNet
from i3ad.synthetic import make_synthetic_category


def _threads() -> int:
    """Two threads for the two cores of the test machine, unless I3AD_TEST_THREADS says otherwise or other processes
    already keep the cores busy: then two OpenMP threads mostly wait for each other (measured on 2 cores at a load
    average of 4: the end-to-end training fixture took 122 s with 2 threads and 20 s with 1)."""
    if "I3AD_TEST_THREADS" in os.environ:
        return int(os.environ["I3AD_TEST_THREADS"])
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 2)
    return 1 if busy else 2


torch.set_num_threads(_threads())


def make_unet(channels: int = 3, seed: int = 0, patch_size: int = 1) -> InpaintingUNet:
    """A small untrained inpainting U-Net (base width 8) in eval mode, with fixed weights."""
    torch.manual_seed(seed)
    return InpaintingUNet(channels=channels, base_width=8, patch_size=patch_size).eval()


@pytest.fixture
def unet() -> InpaintingUNet:
    return make_unet(3)


@pytest.fixture
def folded_unet() -> InpaintingUNet:
    """The same with 2 x 2 pixel blocks folded into channels before its first level."""
    return make_unet(3, patch_size=2)


@pytest.fixture
def unet_grey() -> InpaintingUNet:
    return make_unet(1)


@pytest.fixture
def autoencoder() -> ConvAutoencoder:
    torch.manual_seed(0)
    return ConvAutoencoder(channels=3, image_size=32, base_width=8, latent_dim=16).eval()


@pytest.fixture
def images32() -> torch.Tensor:
    """Two structured RGB images 32 x 32 in [0, 1] (a sinusoid plus noise), fixed seed."""
    generator = torch.Generator().manual_seed(1)
    y, x = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(12 * x) * torch.cos(9 * y)
    noise = 0.05 * torch.randn(2, 3, 32, 32, generator=generator)
    return (base + noise).clamp(0, 1)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> tuple:
    """(data_root, category folder) of the default synthetic category (64 px RGB), written once per session.

    Tests must not modify it; copy it first when a test needs to break the layout.
    """
    data_root = tmp_path_factory.mktemp("data")
    return data_root, make_synthetic_category(data_root, "synthetic")


@pytest.fixture
def cli_error(capsys):
    """Reads what a failed ``i3ad.cli.main`` run printed: an "error: ..." line, never a traceback."""

    def read() -> str:
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err, err
        return err

    return read
