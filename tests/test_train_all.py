"""scripts/train_all.sh, the command that retrains the shipped checkpoints, gives each variant its shipped shape, recipe
and detection settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from i3ad.checkpoints import load_checkpoint
from i3ad.scoring import DetectionSettings
from i3ad.shipped import SHIPPED_SETTINGS, SHIPPED_TRAINING
from i3ad.synthetic import make_synthetic_category

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_train_all_trains_each_variant_in_its_shipped_shape(tmp_path):
    make_synthetic_category(tmp_path / "data", "synthetic", train=20, test_good=2, test_per_defect=2)
    env = {
        **os.environ,
        # The script runs `python`: make that the interpreter running these tests, whether or not its venv is active.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "STEPS": "1",
        "BATCH": "2",
        "DEVICES": "cpu",
        "LOG_DIR": str(tmp_path / "logs"),
    }
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "train_all.sh"), str(tmp_path / "data"), str(tmp_path / "ck"), "synthetic"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    def config(name: str) -> dict:
        return json.loads((tmp_path / "ck" / "synthetic" / name / "config.json").read_text())

    # The shipped i3ad checkpoints have their first two levels without GroupNorm; i3ad-small and the AE do not.
    assert config("i3ad")["norm_free_levels"] == 2 and config("i3ad")["base_width"] == 32
    assert "norm_free_levels" not in config("i3ad-small") and config("i3ad-small")["base_width"] == 16
    assert config("ae")["architecture"] == "ConvAutoencoder"
    for shipped in (ROOT / "checkpoints").glob("*/i3ad*/config.json"):
        name = shipped.parent.name
        assert json.loads(shipped.read_text()).get("norm_free_levels") == config(name).get("norm_free_levels"), shipped

    def training(folder: Path) -> dict:
        return json.loads((folder / "detector.json").read_text())["info"]["training"]

    def detection(folder: Path) -> DetectionSettings:
        """Its default settings, tau aside (calibrated per category)."""
        return load_checkpoint(folder).settings.with_(ssim_threshold=0.5)

    # Each inpainting variant is trained and detects as shipped, and so are the committed checkpoints: its training
    # options (SHIPPED_TRAINING; notebook 01 trains i3ad with them), T and iteration rule (SHIPPED_SETTINGS, which the
    # README's tables and the app summarise them at).
    assert set(SHIPPED_TRAINING) == set(SHIPPED_SETTINGS.per_model) == {"i3ad", "i3ad-small"}
    for name, options in SHIPPED_TRAINING.items():
        trained = tmp_path / "ck" / "synthetic" / name
        for folder in [trained, *(ROOT / "checkpoints").glob(f"*/{name}")]:
            assert {key: training(folder).get(key) for key in options} == dict(options), folder
            assert detection(folder) == SHIPPED_SETTINGS.of(name).with_(ssim_threshold=0.5), folder
