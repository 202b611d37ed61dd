"""The README's front matter configures the Hugging Face Space: the app it starts, and a Gradio version that
requirements.txt (which the Space installs next) allows."""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _front_matter() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "the README must open with the Space's configuration"
    block = text.split("---\n")[1]
    return dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)


def test_the_space_starts_the_app_on_a_gradio_version_the_requirements_allow():
    config = _front_matter()
    assert config["sdk"] == "gradio" and (ROOT / config["app_file"]).is_file()
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    gradio = next(Requirement(line) for line in requirements if line.startswith("gradio"))
    assert Version(config["sdk_version"]) in gradio.specifier
