"""The app as it is deployed, `python app.py` in a process of its own: it starts offline, sends nothing off the
machine, serves 20 concurrent clients correctly with bounded memory, and refuses what it must.

The server runs with HF_HUB_OFFLINE=1 and GRADIO_ANALYTICS_ENABLED=False. Its checkpoints are partly in a local
folder (rgb) and partly only in the Hugging Face cache (grey, downloaded beforehand from test_hub's stand-in Hub, which
is then stopped). An audit hook (sys.addaudithook: Python reports every socket connection and name lookup to it)
refuses each one that is not to the loopback interface, as if there were no network, and writes it to a file the
tests read. The clients speak Gradio's HTTP API (upload, then /call/detect and its event stream), as any client does.
Every request is bounded in time, and the number of requests is fixed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
from test_app import free_port
from test_hub import REPO_ID, FakeHub, hub_env, resolve_in_subprocess
from test_robustness import save_tiny_checkpoints, write_bad_inputs, write_good_inputs

from i3ad.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120  # importing gradio and torch takes a while on a busy machine
REQUEST_TIMEOUT_S = 60
CLIENTS, ROUNDS = 20, 3
RSS_GROWTH_LIMIT_MB = 100

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads memory from /proc (Linux)")

# Runs app.py as `python app.py` does, behind an audit hook that refuses and records every socket connection, datagram
# and name lookup that does not stay on this machine. argv: the record file, app.py.
LAUNCHER = r"""
import ipaddress, json, runpy, socket, sys

record = open(sys.argv[1], "a", buffering=1)
LOOKUPS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr")


def on_this_machine(host) -> bool:
    if host is None or host in ("", "localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host).is_loopback
    except ValueError:
        return False  # a name: looking it up would ask a DNS server


def audit(event, args):
    if event in ("socket.connect", "socket.sendto"):
        sock, address = args[0], args[1]
        if sock.family == socket.AF_UNIX or on_this_machine(address[0]):
            return
        target = address[:2]
    elif event in LOOKUPS:
        if on_this_machine(args[0]):
            return
        target = args[0]
    else:
        return
    record.write(json.dumps([event, repr(target)]) + "\n")
    raise OSError(f"no network in this test ({event} {target!r})")


sys.addaudithook(audit)
try:  # the hook's own check: a connection to TEST-NET-1 (192.0.2.1) must be refused and recorded
    socket.create_connection(("192.0.2.1", 80), timeout=1)
except OSError:
    pass
sys.argv = [sys.argv[2]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
CANARY = ["socket.getaddrinfo", "'192.0.2.1'"]


class Served(NamedTuple):
    url: str
    process: subprocess.Popen
    attempts: Path
    log: Path
    checkpoints: Path  # all of them, as the test builds them: rgb is served from a folder, grey from the cache


def _environment(**settings: str) -> dict[str, str]:
    """This process's environment without its Hugging Face, i3ad and Gradio settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "I3AD_", "GRADIO_"))}
    return env | {"PYTHONPATH": str(ROOT), **settings}


def _wait_until_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with status {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}config", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"the app was not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    base = tmp_path_factory.mktemp("served")
    checkpoints = save_tiny_checkpoints(base / "built")
    shutil.copytree(checkpoints / "rgb", base / "checkpoints" / "rgb")
    shutil.copytree(checkpoints / "grey", base / "repo" / "grey")
    hub = FakeHub(REPO_ID, base / "repo")
    try:  # fill the Hugging Face cache with grey/i3ad, as an earlier online start would have
        downloaded = resolve_in_subprocess(hub_env(base, hub.url), "grey/i3ad")
    finally:
        hub.stop()
    assert "folder" in downloaded["grey/i3ad"], downloaded

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = _environment(
        HF_HOME=str(base / "hf_home"),
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_TEMP_DIR=str(base / "gradio"),
        I3AD_CHECKPOINTS=str(base / "checkpoints"),
        I3AD_HUB_REPO=REPO_ID,
    )
    attempts, log = base / "connections.jsonl", base / "app.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(attempts), str(ROOT / "app.py")],
            cwd=base,  # Gradio may write a .gradio folder here
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_ready(url, process, log)
        yield Served(url, process, attempts, log, checkpoints)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return {
        **write_good_inputs(tmp_path_factory.mktemp("good")),
        **write_bad_inputs(tmp_path_factory.mktemp("bad")),
    }


def expected_score(served: Served, category: str, image: Path) -> object:
    """The score a direct library call gives, as a ``pytest.approx`` to the app's 4 decimals: the server runs with
    its own thread count, which can move the last bits of a score and so flip its fourth decimal."""
    detector = load_checkpoint(served.checkpoints / category / "i3ad")
    return pytest.approx(detector.detect(detector.read(image)).scores[0].item(), abs=1.5e-4)


def network_attempts(served: Served) -> list[list[str]]:
    """Every connection or name lookup off this machine the server tried, after the launcher's own check."""
    lines = served.attempts.read_text().splitlines()
    assert json.loads(lines[0]) == CANARY  # the hook works: it caught the launcher's own attempt
    return [json.loads(line) for line in lines[1:]]


def memory_mb(process: subprocess.Popen) -> dict[str, float]:
    """The process's resident memory now (VmRSS) and at its peak (VmHWM), in MB."""
    status = Path(f"/proc/{process.pid}/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}


class AppClient:
    """One client of the launched app, through Gradio's HTTP API."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=f"{url}gradio_api", timeout=REQUEST_TIMEOUT_S)

    def close(self) -> None:
        self.http.close()

    def upload(self, path: Path) -> dict:
        """The file payload of ``path`` uploaded, as Gradio's page and gradio_client send it."""
        with open(path, "rb") as handle:
            response = self.http.post("/upload", files=[("files", (path.name, handle))])
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def detect(self, category: str, image: object, iterations: object = 1, tau: object = None) -> tuple[str, object]:
        """("complete", the outputs) or ("error", the message) of one detect call."""
        response = self.http.post("/call/detect", json={"data": [category, "i3ad", image, iterations, tau]})
        response.raise_for_status()
        event = None
        with self.http.stream("GET", f"/call/detect/{response.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event in ("complete", "error"):
                    data = json.loads(line.removeprefix("data: "))
                    return event, data if event == "complete" else data["error"]
        raise AssertionError("the event stream ended without a result")


def score_of(outputs: list) -> float:
    """The score in the summary (the fourth output)."""
    return float(re.search(r"Anomaly score \*\*([0-9.]+)\*\*", outputs[3]).group(1))


@pytest.fixture
def client(served):
    client = AppClient(served.url)
    yield client
    client.close()


def test_the_app_starts_offline_and_sends_nothing_off_the_machine(served, inputs, client):
    config = httpx.get(f"{served.url}config", timeout=REQUEST_TIMEOUT_S).json()
    menu = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "category")
    assert [choice[0] for choice in menu["props"]["choices"]] == ["grey", "rgb"]  # grey is only in the cache
    assert config["max_file_size"] == 100 * 1024**2  # app.MAX_UPLOAD_SIZE, set by `python app.py`
    for category in ("grey", "rgb"):
        status, outputs = client.detect(category, client.upload(inputs["rgb.png"]))
        assert status == "complete", outputs
        assert score_of(outputs) == expected_score(served, category, inputs["rgb.png"])
    assert network_attempts(served) == []


def test_twenty_concurrent_clients_get_correct_results_with_bounded_memory(served, inputs):
    # Each client sends its own image (some of them bad files), so that a mixed-up answer would show.
    names = ["rgb.png", "grey16.png", "palette.png", "exif_rotated.jpg", "rgba.png", "cmyk.jpg", "text.png"]
    expected = {name: expected_score(served, "rgb", inputs[name]) for name in names if name != "text.png"}

    def session(number: int) -> list[tuple[str, str, object]]:
        client = AppClient(served.url)
        try:
            name = names[number % len(names)]
            status, outputs = client.detect("rgb", client.upload(inputs[name]))
            return [(name, status, score_of(outputs) if status == "complete" else outputs)]
        finally:
            client.close()

    def run(rounds: int) -> list[tuple[str, str, object]]:
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(session, n) for n in range(CLIENTS * rounds)]
            return [answer for future in futures for answer in future.result(timeout=REQUEST_TIMEOUT_S * rounds)]

    started = time.monotonic()
    answers = run(1)  # the first round warms the server up: models loaded, caches filled
    warm = memory_mb(served.process)
    answers += run(ROUNDS - 1)
    after = memory_mb(served.process)

    assert len(answers) == CLIENTS * ROUNDS
    for name, status, result in answers:
        if name == "text.png":
            assert (status, result) == ("error", "text.png: not a readable image (not in a format Pillow knows)")
        else:
            assert (status, result) == ("complete", expected[name]), name
    growth = after["VmRSS"] - warm["VmRSS"]
    assert growth < RSS_GROWTH_LIMIT_MB, f"RSS grew by {growth:.0f} MB over {CLIENTS * (ROUNDS - 1)} requests"
    print(f"{CLIENTS * ROUNDS} requests in {time.monotonic() - started:.1f} s; memory (MB) {warm} -> {after}")
    assert network_attempts(served) == []


def test_a_10000_pixel_square_upload_is_refused_without_decoding(served, inputs, client):
    before = memory_mb(served.process)
    status, message = client.detect("rgb", client.upload(inputs["huge.png"]))
    assert status == "error"
    assert message == ("huge.png: 10000x10000 is larger than the 40 megapixels this tool accepts; downscale it first")
    # Decoding it would take 300 MB as 8-bit pixels, and four times as much as floats.
    assert memory_mb(served.process)["VmRSS"] - before["VmRSS"] < RSS_GROWTH_LIMIT_MB


def test_files_that_were_not_uploaded_are_refused(served, inputs, client):
    outside = str(inputs["rgb.png"])  # an image on the server's disk, outside Gradio's upload folder
    for payload in ({"path": outside}, {"path": outside, "orig_name": "rgb.png"}):
        status, message = client.detect("rgb", payload)  # Gradio passes these unchecked: the app refuses them
        assert (status, message) == (
            "error",
            "The image must be a file uploaded to this app (from Python: gradio_client.handle_file(path)).",
        )
    for payload in ({"path": outside, "meta": {"_type": "gradio.FileData"}}, outside):
        status, message = client.detect("rgb", payload)  # Gradio refuses these itself, with a bare "Error"
        assert status == "error" and message is None
    assert network_attempts(served) == []
