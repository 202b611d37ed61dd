"""scripts/bench_app.py, the script behind the README's app timings, starts the app on the committed checkpoints,
times requests through its API and writes the table it prints as CSV."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_app.py"


def test_bench_app_times_the_running_app_and_writes_its_table(tmp_path):
    out = tmp_path / "perf_app.csv"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--iterations", "0", "--repeats", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "app start to ready" in run.stdout and f"wrote {out}" in run.stdout
    with out.open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["what"], row["setting"]) for row in rows] == [
        ("app start to ready", "-"),
        ("one 256x256 upload, bottle/i3ad-small", "T=0"),
    ]
    for row in rows:
        assert 0 < float(row["best_s"]) <= float(row["median_s"]) < 300
        assert int(row["cpu_count"]) >= 1 and row["torch"]


def test_bench_app_refuses_an_output_folder_that_does_not_exist_before_timing(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "missing" / "perf_app.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "does not exist" in run.stderr and "app start" not in run.stdout


def test_bench_app_refuses_a_folder_as_its_output_file(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2 and "is a folder" in run.stderr and "app start" not in run.stdout
