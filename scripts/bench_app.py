"""Time the app as a user meets it: `python app.py` from start to ready, then one 256 x 256 upload per request.

Prints a table (and with --out writes it as CSV): the start-up time, and per request (T, tau as calibrated) the wall
time from the client's call to its answer, upload included; the answer names the output images, which a browser then
fetches in parallel (that download is not counted). Run on an otherwise idle machine (other processes slow the CPU
path several times).

usage: python scripts/bench_app.py [--category bottle] [--variant i3ad-small] [--iterations 0 5] [--repeats 3]
                                   [--out results/perf_app.csv]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from i3ad.demo import synthetic_examples  # noqa: E402
from i3ad.outputs import write_csv  # noqa: E402

READY_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(url: str, app: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if app.poll() is not None:
            raise RuntimeError(f"the app exited with code {app.returncode} before it was ready")
        try:
            if httpx.get(f"{url}config", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the app was not ready after {READY_TIMEOUT_S} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--variant", default="i3ad-small", help="the app's CPU default")
    parser.add_argument("--iterations", type=int, nargs="+", default=[0, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the table to this CSV file (replaced if it exists)")
    args = parser.parse_args()
    if args.repeats < 1:  # checked before the app starts: the medians need timed requests
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    # Checked before the minutes of timing, not after them.
    if args.out is not None and not args.out.parent.is_dir():
        parser.error(f"--out: the folder {args.out.parent} does not exist")
    if args.out is not None and args.out.is_dir():
        parser.error(f"--out: {args.out} is a folder; name the CSV file to write")

    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    started = time.perf_counter()
    app = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_until_ready(url, app)
        start_s = time.perf_counter() - started
        rows = [("app start to ready", "-", start_s, start_s, 1)]  # what, setting, median, best, times timed
        with tempfile.TemporaryDirectory() as scratch:
            image = synthetic_examples(Path(scratch) / "examples")[1]  # a 256 x 256 image with a painted defect
            client = Client(url, verbose=False, download_files=False)
            for iterations in args.iterations:
                times = []
                for _ in range(args.repeats + 1):  # the first request also loads the models: not counted
                    begun = time.perf_counter()
                    client.predict(
                        args.category, args.variant, handle_file(str(image)), iterations, None, api_name="/detect"
                    )
                    times.append(time.perf_counter() - begun)
                what = f"one 256x256 upload, {args.category}/{args.variant}"
                rows.append((what, f"T={iterations}", statistics.median(times[1:]), min(times[1:]), args.repeats))
    finally:
        app.terminate()
        app.wait(timeout=30)
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'setting':<8}  time (median of {args.repeats})")
    for what, setting, median, best, _ in rows:
        print(f"{what:<{width}}  {setting:<8}  {median:.2f} s (best {best:.2f})")
    if args.out is not None:
        write_table(args.out, rows)


def write_table(path: Path, rows: list[tuple[str, str, float, float, int]]) -> None:
    """The printed table as CSV, with the host it ran on (CPU timings differ by host by about half)."""
    # The cores this process may run on (fewer than the machine's under an affinity mask), where the system says.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    host = {"cpu_count": cores, "torch": torch.__version__, "machine": platform.machine()}
    table = pd.DataFrame(rows, columns=["what", "setting", "median_s", "best_s", "repeats"]).assign(**host)
    write_csv(table, path, float_format="%.3f")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
