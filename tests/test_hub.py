"""Loading checkpoints from a Hugging Face Hub repo, against a local stand-in for the Hub (no mock of huggingface_hub).

The stand-in answers the HTTP requests huggingface_hub 2.4 makes for ``snapshot_download``: the revision info
(GET /api/models/{repo}/revision/{rev}), the file tree (GET /api/models/{repo}/tree/{commit}), and per file
HEAD + GET /{repo}/resolve/{commit}/{path} with X-Repo-Commit / ETag / Content-Length; LFS files (the safetensors
weights) answer with a redirect to a second "CDN" server and X-Linked-Etag / X-Linked-Size, as the Hub does.
For uploads it answers the repo info (GET /api/models/{repo}, a public repo) and ``create_repo`` (POST
/api/repos/create: the repo exists already), and refuses every other POST, as the Hub does without write access.
The resolver runs in a subprocess, because huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE on import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
from tiny_checkpoints import save_untrained_checkpoint

from i3ad.checkpoints import CheckpointError, load_checkpoint
from i3ad.cli import main
from i3ad.hub import CheckpointResolver

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "i3ad-tests/checkpoints"
LFS_SUFFIXES = (".safetensors", ".bin")


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's content (the Hub's ETag of a file stored in git, and its tree "oid")."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """One model repo served from a folder at http://127.0.0.1:<port>, its LFS files from a second "CDN" server.
    ``requests`` records (method, path) of every request to either."""

    def __init__(self, repo_id: str, folder: Path) -> None:
        self.repo_id = repo_id
        self.files = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
        }
        # A commit id of 40 hex digits that changes with the content, like git's.
        self.commit = git_blob_id(json.dumps(sorted((k, git_blob_id(v)) for k, v in self.files.items())).encode())
        self.blobs = {hashlib.sha256(v).hexdigest(): v for k, v in self.files.items() if k.endswith(LFS_SUFFIXES)}
        self.requests: list[tuple[str, str]] = []
        self.hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(self._answer_hub))
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(self._answer_cdn))
        self.url = f"http://127.0.0.1:{self.hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"
        for server in (self.hub, self.cdn):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()

    def _handler(self, answer):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                answer(self, head=False)

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path))
                answer(self, head=True)

            def do_POST(self):
                hub.requests.append(("POST", self.path))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, message = (
                    (409, "You already created this model repo")
                    if self.path == "/api/repos/create"
                    else (403, "no write access (test hub)")
                )
                headers = {"Content-Type": "application/json", "X-Error-Message": message}
                # The Hub names an existing repo's address in its 409 answer; huggingface_hub reads it.
                body = {"error": message, "url": f"{hub.url}/{hub.repo_id}"}
                hub._send(self, status, headers, json.dumps(body).encode())

            def log_message(self, *args):
                pass

        return Handler

    @staticmethod
    def _send(request, status: int, headers: dict, body: bytes = b"", head: bool = False) -> None:
        request.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            request.send_header(key, value)
        request.end_headers()
        if not head:
            request.wfile.write(body)

    def _json(self, request, data, head: bool) -> None:
        self._send(request, 200, {"Content-Type": "application/json"}, json.dumps(data).encode(), head)

    def _not_found(self, request, code: str, head: bool) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": f"{code} (test hub)", "X-Repo-Commit": self.commit}
        self._send(request, 404, headers, b'{"error": "not found"}', head)

    def _tree(self) -> list[dict]:
        entries, folders = [], set()
        for path, data in self.files.items():
            entry = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
            parts = path.split("/")[:-1]
            folders |= {"/".join(parts[: i + 1]) for i in range(len(parts))}
        return [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)] + entries

    def _answer_hub(self, request, head: bool) -> None:
        path = unquote(urlparse(request.path).path)
        api, resolve = f"/api/models/{self.repo_id}/", f"/{self.repo_id}/resolve/"
        if path == api.rstrip("/"):
            return self._json(request, {"id": self.repo_id, "sha": self.commit, "private": False}, head)
        if path.startswith(api):
            kind, _, revision = path[len(api) :].partition("/")
            if revision not in ("main", self.commit):
                return self._not_found(request, "RevisionNotFound", head)
            if kind == "revision":
                siblings = [{"rfilename": p} for p in self.files]
                return self._json(request, {"id": self.repo_id, "sha": self.commit, "siblings": siblings}, head)
            if kind == "tree":
                return self._json(request, self._tree(), head)
        elif path.startswith(resolve):
            revision, _, name = path[len(resolve) :].partition("/")
            if revision not in ("main", self.commit):
                return self._not_found(request, "RevisionNotFound", head)
            if name not in self.files:
                return self._not_found(request, "EntryNotFound", head)
            data = self.files[name]
            headers = {"X-Repo-Commit": self.commit, "ETag": f'"{git_blob_id(data)}"'}
            if name.endswith(LFS_SUFFIXES):
                sha256 = hashlib.sha256(data).hexdigest()
                headers |= {
                    "Location": f"{self.cdn_url}/blobs/{sha256}",
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(len(data)),
                }
                return self._send(request, 302, headers, head=head)
            return self._send(request, 200, headers, data, head)
        self._not_found(request, "RepoNotFound", head)

    def _answer_cdn(self, request, head: bool) -> None:
        sha256 = urlparse(request.path).path.removeprefix("/blobs/")
        if sha256 not in self.blobs:
            return self._send(request, 404, {}, b"no such blob", head)
        self._send(request, 200, {"ETag": f'"{sha256}"'}, self.blobs[sha256], head)


# Run in a fresh interpreter: prints what the resolver found, or the error it gave, as JSON.
RESOLVE_SCRIPT = """
import json, sys
from i3ad.checkpoints import CheckpointError
from i3ad.hub import CheckpointResolver

resolver = CheckpointResolver.from_env()
listing = resolver.listing()
answers = {"available": listing.checkpoints, "complete": listing.complete}
for category, variant in [tuple(arg.split("/")) for arg in sys.argv[1:]]:
    try:
        detector = resolver.load(category, variant)
        answers[f"{category}/{variant}"] = {"folder": str(resolver.resolve(category, variant)), "name": detector.name}
    except CheckpointError as error:
        answers[f"{category}/{variant}"] = {"error": str(error)}
print(json.dumps(answers))
"""


def resolve_in_subprocess(env: dict, *checkpoints: str) -> dict:
    process = subprocess.run(
        [sys.executable, "-c", RESOLVE_SCRIPT, *checkpoints], env=env, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout.strip().splitlines()[-1])


@pytest.fixture
def served(tmp_path):
    """A repo with synth/{i3ad, ae} and other/i3ad, plus a pickle file that must never be fetched."""
    repo = tmp_path / "repo"
    for category, variant in (("synth", "i3ad"), ("synth", "ae"), ("other", "i3ad")):
        save_untrained_checkpoint(repo, category, variant, size=32)
    (repo / "synth" / "i3ad" / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle")
    hub = FakeHub(REPO_ID, repo)
    yield hub, repo
    hub.stop()


def hub_env(tmp_path: Path, endpoint: str, offline: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "I3AD_"))}
    env |= {
        "PYTHONPATH": str(ROOT),
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "I3AD_CHECKPOINTS": str(tmp_path / "no_local_checkpoints"),
        "I3AD_HUB_REPO": REPO_ID,
    }
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def test_download_then_offline_load_from_cache(served, tmp_path):
    hub, repo = served

    online = resolve_in_subprocess(hub_env(tmp_path, hub.url), "synth/i3ad", "missing/i3ad")

    assert online["available"] == {"other": ["i3ad"], "synth": ["ae", "i3ad"]}
    folder = Path(online["synth/i3ad"]["folder"])
    snapshot = tmp_path / "hf_home" / "hub" / "models--i3ad-tests--checkpoints" / "snapshots" / hub.commit
    assert folder == snapshot / "synth" / "i3ad"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "detector.json",
        "model.safetensors",
        "normal_error.safetensors",
    ]
    assert load_checkpoint(folder).calibration.normal_error.steps == 11
    downloaded = load_checkpoint(folder).model.state_dict()
    original = load_checkpoint(repo / "synth" / "i3ad").model.state_dict()
    assert all(torch.equal(downloaded[k], original[k]) for k in original)
    # The Hub's real endpoints were used; the weights came through the LFS redirect; nothing else was fetched.
    paths = [path for _, path in hub.requests]
    assert f"/api/models/{REPO_ID}/revision/main" in paths
    assert any(p.startswith(f"/api/models/{REPO_ID}/tree/{hub.commit}") for p in paths)
    assert ("HEAD", f"/{REPO_ID}/resolve/{hub.commit}/synth/i3ad/model.safetensors") in hub.requests
    assert any(p.startswith("/blobs/") for p in paths)
    fetched = {p.split(f"/resolve/{hub.commit}/")[1] for p in paths if "/resolve/" in p}
    assert fetched == {
        "synth/i3ad/config.json",
        "synth/i3ad/model.safetensors",
        "synth/i3ad/detector.json",
        "synth/i3ad/normal_error.safetensors",
        "synth/i3ad/README.md",
        "synth/ae/detector.json",
        "other/i3ad/detector.json",
    }
    assert "pytorch_model.bin" not in str(paths)
    # A category the repo does not have: a clear message, naming what it has.
    error = online["missing/i3ad"]["error"]
    assert "no checkpoint missing/i3ad" in error and REPO_ID in error and "synth/i3ad" in error

    hub.stop()
    offline = resolve_in_subprocess(hub_env(tmp_path, hub.url, offline=True), "synth/i3ad", "synth/ae")

    assert offline["synth/i3ad"] == {"folder": str(folder), "name": "i3ad"}
    assert offline["available"] == online["available"]  # from the cached detector.json files
    assert online["complete"] and offline["complete"]
    assert "could not get checkpoints" in offline["synth/ae"]["error"]  # never downloaded: not in the cache


@pytest.mark.parametrize("links", [True, False], ids=["cache-with-links", "cache-without-links"])
def test_a_damaged_cached_checkpoint_is_downloaded_again(served, tmp_path, links):
    hub, _ = served
    env = hub_env(tmp_path, hub.url) | ({} if links else {"HF_HUB_DISABLE_SYMLINKS": "1"})
    checkpoints = ("synth/i3ad", "synth/ae", "other/i3ad")  # other/i3ad's files are synth/i3ad's bytes
    first = resolve_in_subprocess(env, *checkpoints)
    cached_weights = Path(first["synth/i3ad"]["folder"]) / "model.safetensors"
    assert cached_weights.is_symlink() == links
    cached_weights.resolve().write_bytes(b"damaged on the disk")
    hub.requests.clear()

    again = resolve_in_subprocess(env, *checkpoints)
    assert [again[c]["name"] for c in checkpoints] == ["i3ad", "ae", "i3ad"]
    assert any(path.startswith("/blobs/") for _, path in hub.requests)  # the weights came again
    assert load_checkpoint(Path(again["synth/i3ad"]["folder"])).name == "i3ad"
    # Only the damaged file was replaced: everything else still loads from the cache alone.
    offline_env = env | {"HF_HUB_OFFLINE": "1"}
    offline = resolve_in_subprocess(offline_env, *checkpoints)
    assert [offline[c]["name"] for c in checkpoints] == ["i3ad", "ae", "i3ad"]
    assert offline["complete"] and offline["available"] == first["available"]
    # Offline, a damaged copy cannot be replaced: the error says so, and the cache is left as it was.
    cached_weights.resolve().write_bytes(b"damaged on the disk")
    offline = resolve_in_subprocess(offline_env, "synth/i3ad")
    error = offline["synth/i3ad"]["error"]
    assert "is damaged or not a safetensors file" in error and "it cannot be downloaded again now" in error
    assert cached_weights.resolve().read_bytes() == b"damaged on the disk"
    assert offline["complete"] and offline["available"] == first["available"]


def test_a_damaged_copy_on_the_hub_is_named_as_such(tmp_path):
    repo = tmp_path / "repo"
    save_untrained_checkpoint(repo, "synth", "i3ad", size=32)
    (repo / "synth" / "i3ad" / "model.safetensors").write_bytes(b"not safetensors")
    hub = FakeHub(REPO_ID, repo)
    try:
        answers = resolve_in_subprocess(hub_env(tmp_path, hub.url), "synth/i3ad")
    finally:
        hub.stop()
    error = answers["synth/i3ad"]["error"]
    assert "is damaged or not a safetensors file" in error and "the Hub's copy is damaged" in error


def test_a_checkpoint_that_loads_wrongly_but_is_whole_is_not_downloaded_again(tmp_path):
    repo = tmp_path / "repo"
    save_untrained_checkpoint(repo, "synth", "i3ad", size=32)
    record_file = repo / "synth" / "i3ad" / "detector.json"
    record = json.loads(record_file.read_text())
    record["detection"]["iterations"] = 10**6  # whole, valid JSON, but no checkpoint this version can use
    record_file.write_text(json.dumps(record))
    hub = FakeHub(REPO_ID, repo)
    try:
        answers = resolve_in_subprocess(hub_env(tmp_path, hub.url), "synth/i3ad")
    finally:
        hub.stop()
    assert "iterations" in answers["synth/i3ad"]["error"] and "downloaded again" not in answers["synth/i3ad"]["error"]
    blobs = [path for method, path in hub.requests if method == "GET" and path.startswith("/blobs/")]
    assert len(blobs) == len(set(blobs)) == 2  # the weights and the normal error, each fetched once


def test_local_checkpoints_come_first(tmp_path):
    save_untrained_checkpoint(tmp_path / "local", "synth", "i3ad", size=32)
    # The repo is never asked (its endpoint does not exist): the local folder has the checkpoint.
    resolver = CheckpointResolver(tmp_path / "local", repo_id=REPO_ID)
    assert resolver.resolve("synth", "i3ad") == tmp_path / "local" / "synth" / "i3ad"
    with pytest.raises(CheckpointError, match=r"no checkpoint synth/ae under .*set I3AD_HUB_REPO"):
        CheckpointResolver(tmp_path / "local").resolve("synth", "ae")


@pytest.mark.parametrize("repo_id", ["not a repo", "user/name/extra", "user//name", "../user", "u" * 200])
def test_invalid_repo_id_is_refused(tmp_path, monkeypatch, repo_id):
    with pytest.raises(CheckpointError, match="not a valid Hugging Face Hub repo id"):
        CheckpointResolver(tmp_path, repo_id=repo_id)
    monkeypatch.setenv("I3AD_HUB_REPO", repo_id)
    with pytest.raises(CheckpointError, match="not a valid Hugging Face Hub repo id"):
        CheckpointResolver.from_env(tmp_path)


@pytest.mark.parametrize(
    ("category", "variant"),
    [("../checkpoints", "i3ad"), ("..", "i3ad"), ("synth/../../etc", "i3ad"), ("/etc", "i3ad"), ("synth", "../ae")],
)
def test_path_traversal_is_refused(tmp_path, category, variant):
    save_untrained_checkpoint(tmp_path / "local", "synth", "i3ad", size=32)
    resolver = CheckpointResolver(tmp_path / "local" / "synth", repo_id=REPO_ID)
    with pytest.raises(CheckpointError, match="is not a valid name"):
        resolver.load(category, variant)


def test_upload_command_refuses_bad_arguments_before_any_network(tmp_path, capsys):
    save_untrained_checkpoint(tmp_path / "checkpoints", "synth", "i3ad", size=32)
    root = str(tmp_path / "checkpoints")

    assert main(["upload", "--checkpoints", root, "--repo-id", "not a repo"]) == 2
    assert "not a valid Hugging Face Hub repo id" in capsys.readouterr().err
    assert main(["upload", "--checkpoints", root, "--repo-id", REPO_ID, "--category", "pill"]) == 2
    assert "no checkpoint of category 'pill'" in capsys.readouterr().err
    # A variant that does not exist is refused, also next to one that does (not silently left out).
    assert main(["upload", "--checkpoints", root, "--repo-id", REPO_ID, "--model", "i3ad", "i3ad-smal"]) == 2
    assert f"no checkpoint named 'i3ad-smal' under {root} (have: synth/i3ad)" in capsys.readouterr().err
    assert main(["upload", "--checkpoints", str(tmp_path / "empty"), "--repo-id", REPO_ID]) == 2
    assert "no checkpoints under" in capsys.readouterr().err


def upload_in_subprocess(env: dict, root: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "i3ad", "upload", "--checkpoints", str(root), "--repo-id", REPO_ID, *options]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_upload_reports_a_hub_that_cannot_be_reached_or_refuses(served, tmp_path):
    hub, _ = served
    root = tmp_path / "to_upload"
    save_untrained_checkpoint(root, "synth", "i3ad", size=32)
    # A port nothing listens on: bound, then closed again.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    cases = [
        (hub_env(tmp_path, closed_endpoint), "is the network up"),
        (hub_env(tmp_path, hub.url, offline=True), "is the network up"),
        # The stand-in takes no upload, as a Hub without the user's write access would refuse it.
        (hub_env(tmp_path, hub.url) | {"HF_TOKEN": "hf_not_a_real_token"}, "log in"),
    ]
    for env, hint in cases:
        process = upload_in_subprocess(env, root)
        assert process.returncode == 2, process.stderr
        assert process.stderr.startswith(f"error: upload to Hub repo '{REPO_ID}' failed: "), process.stderr
        assert hint in process.stderr and "Traceback" not in process.stderr


def test_a_private_upload_into_an_existing_public_repo_is_refused_before_any_file_is_sent(served, tmp_path):
    hub, _ = served  # its repo exists and is public
    root = tmp_path / "to_upload"
    save_untrained_checkpoint(root, "synth", "i3ad", size=32)
    env = hub_env(tmp_path, hub.url) | {"HF_TOKEN": "hf_not_a_real_token"}
    process = upload_in_subprocess(env, root, "--private")
    assert process.returncode == 2, process.stderr
    assert f"Hub repo '{REPO_ID}' exists and is public" in process.stderr and "nothing was uploaded" in process.stderr
    assert "Traceback" not in process.stderr
    posts = [path for method, path in hub.requests if method == "POST"]
    assert posts == ["/api/repos/create"]  # no pre-upload or commit followed


def test_a_repo_or_revision_that_does_not_exist_is_named(served, tmp_path):
    hub, _ = served
    # The Hub's first line of these errors is only "404 Client Error."
    wrong_revision = resolve_in_subprocess(hub_env(tmp_path, hub.url) | {"I3AD_HUB_REVISION": "v9"}, "synth/i3ad")
    assert wrong_revision["synth/i3ad"]["error"] == (
        f"Hub repo '{REPO_ID}' at revision 'v9': no such revision (check I3AD_HUB_REVISION)"
    )
    wrong_repo = resolve_in_subprocess(hub_env(tmp_path, hub.url) | {"I3AD_HUB_REPO": "nobody/none"}, "synth/i3ad")
    assert wrong_repo["available"] == {}
    assert wrong_repo["synth/i3ad"]["error"].startswith("Hub repo 'nobody/none' was not found, or is private")


class GatedHub(FakeHub):
    """A Hub whose repo is gated: every request is refused until the user accepts its conditions."""

    def _answer_hub(self, request, head: bool) -> None:
        headers = {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this repo is restricted (test hub)"}
        self._send(request, 403, headers, b'{"error": "gated"}', head)


@contextlib.contextmanager
def serving(hub_kind: type[FakeHub], tmp_path: Path) -> Iterator[FakeHub]:
    """A Hub stand-in of ``hub_kind`` serving a repo with one checkpoint, synth/i3ad."""
    save_untrained_checkpoint(tmp_path / "repo", "synth", "i3ad", size=32)
    hub = hub_kind(REPO_ID, tmp_path / "repo")
    try:
        yield hub
    finally:
        hub.stop()


def test_a_gated_repo_is_named_as_such(tmp_path):
    with serving(GatedHub, tmp_path) as hub:
        answers = resolve_in_subprocess(hub_env(tmp_path, hub.url), "synth/i3ad")
    # A gated repo is a RepositoryNotFoundError to huggingface_hub: it was reported as not found or private.
    assert answers["synth/i3ad"]["error"] == (
        f"Hub repo '{REPO_ID}' is gated: accept its conditions on the Hub, then set HF_TOKEN"
    )


class DroppingHub(FakeHub):
    """A Hub whose CDN breaks every download off half-way (the connection closes before the announced length)."""

    def _answer_cdn(self, request, head: bool) -> None:
        data = self.blobs.get(urlparse(request.path).path.removeprefix("/blobs/"), b"")
        request.send_response(200)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if not head:
            request.wfile.write(data[: len(data) // 2])
        request.close_connection = True


def test_a_broken_download_or_an_unusable_cache_is_a_checkpoint_error(tmp_path):
    with serving(DroppingHub, tmp_path) as hub:
        # The HTTP client's own error (RemoteProtocolError) escaped as it was: the app answered a bare "Error".
        dropped = resolve_in_subprocess(hub_env(tmp_path, hub.url), "synth/i3ad")
        (tmp_path / "a_file").write_text("")
        # A cache folder that cannot be made: the OSError stopped the app from starting, local checkpoints or not.
        no_cache = resolve_in_subprocess(hub_env(tmp_path, hub.url) | {"HF_HOME": str(tmp_path / "a_file" / "hf")})
    assert dropped["available"] == {"synth": ["i3ad"]}  # the listing's small files still come through
    assert dropped["synth/i3ad"]["error"].startswith(f"could not get checkpoints from Hub repo '{REPO_ID}': ")
    assert no_cache == {"available": {}, "complete": False}  # the app asks again later (ModelStore)


def test_an_incomplete_checkpoint_is_neither_uploaded_nor_mistaken_for_a_missing_one(served, tmp_path):
    hub, _ = served
    root = tmp_path / "to_upload"
    save_untrained_checkpoint(root, "synth", "i3ad", size=32)
    (root / "synth" / "i3ad" / "model.safetensors").unlink()  # e.g. a copy that broke off
    process = upload_in_subprocess(hub_env(tmp_path, hub.url) | {"HF_TOKEN": "hf_not_a_real_token"}, root)
    assert process.returncode == 2 and "model.safetensors is missing" in process.stderr, process.stderr
    assert hub.requests == []  # refused before the Hub was asked anything
    # The same checkpoint on the Hub (uploaded by hand, say) is listed, and resolving it says what is wrong.
    partial = FakeHub(REPO_ID, root)
    try:
        answers = resolve_in_subprocess(hub_env(tmp_path / "other", partial.url), "synth/i3ad")
    finally:
        partial.stop()
    assert answers["synth/i3ad"]["error"] == (
        f"Hub repo '{REPO_ID}' holds an incomplete checkpoint synth/i3ad (it lacks model.safetensors): upload it again"
    )
