"""The README's front matter configures the Hugging Face Space: the app it starts, and a Gradio version that
requirements.txt (which the Space installs next) allows."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import metadata_load
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def test_the_space_starts_the_app_on_a_gradio_version_the_requirements_allow():
    config = metadata_load(ROOT / "README.md")  # the Hub's own reader of the front matter
    assert config["sdk"] == "gradio" and (ROOT / config["app_file"]).is_file()
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    requirements = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    gradio = next(requirement for requirement in requirements if requirement.name == "gradio")
    assert Version(str(config["sdk_version"])) in gradio.specifier
