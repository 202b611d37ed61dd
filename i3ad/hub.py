"""Where the app finds checkpoints: a local folder first, then a Hugging Face Hub model repo; and the upload.

The Hub repo has the local layout, ``<category>/<variant>/<CHECKPOINT_FOLDER_FILES>`` (``i3ad.checkpoints``), so
``python -m i3ad upload`` mirrors a local ``checkpoints/`` folder into it. Downloads go through huggingface_hub's cache
(``HF_HOME`` / ``HF_HUB_CACHE``) and honour ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT``; only the files of the requested
checkpoint are fetched, and the weights are only ever read as safetensors (``load_checkpoint``).

Environment: ``I3AD_CHECKPOINTS`` (the local folder, default ``checkpoints``), ``I3AD_HUB_REPO`` (e.g.
``user/i3ad-checkpoints``; unset = local only), ``I3AD_HUB_REVISION`` (branch, tag or commit; default ``main``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from i3ad import data
from i3ad.checkpoints import (
    CHECKPOINT_FILES,
    CHECKPOINT_FOLDER_FILES,
    DETECTOR_FILE,
    CheckpointError,
    DamagedFileError,
    list_checkpoints,
    load_checkpoint,
)
from i3ad.checks import error_summary
from i3ad.detector import AnomalyDetector

ENV_CHECKPOINTS, ENV_HUB_REPO, ENV_HUB_REVISION = "I3AD_CHECKPOINTS", "I3AD_HUB_REPO", "I3AD_HUB_REVISION"
DEFAULT_CHECKPOINTS = "checkpoints"

logger = logging.getLogger(__name__)


def check_repo_id(repo_id: str) -> str:
    """A Hub repo id such as ``user/name``, or CheckpointError saying what is wrong with it."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise CheckpointError(
            f"{repo_id!r} is not a valid Hugging Face Hub repo id, e.g. 'user/name': {error}"
        ) from None
    return repo_id


def check_name(kind: str, name: str) -> str:
    """A category or variant name that is safe as one path component (no '..', no '/'); CheckpointError otherwise."""
    try:
        return data.check_name(kind, name)
    except data.DatasetError as error:
        raise CheckpointError(str(error)) from None


def _hub_patterns(category: str, variant: str) -> list[str]:
    # Only a checkpoint's own files are downloaded and uploaded; anything else in a folder (e.g. a pickle) is not.
    return [f"{category}/{variant}/{name}" for name in CHECKPOINT_FOLDER_FILES]


def _describe(found: dict[str, list[str]]) -> str:
    return ", ".join(f"{c}/{v}" for c, variants in sorted(found.items()) for v in variants) or "none"


def _describe_hub(found: dict[str, list[str]] | None) -> str:
    return "unknown (it could not be listed)" if found is None else _describe(found)


class CheckpointListing(NamedTuple):
    """{category: [variant, ...]} of the checkpoints found; ``complete`` is False when a Hub repo was asked for but
    could not be listed (unreachable and not cached, not found, gated, a wrong revision, an unusable cache folder): the
    listing then holds the local checkpoints only."""

    checkpoints: dict[str, list[str]]
    complete: bool


class CheckpointResolver:
    """Finds the checkpoint folder of a (category, variant): in ``root`` if it is there, else in the Hub repo.

    root: the local checkpoints folder (it need not exist). repo_id: a Hub model repo with the same layout, or None
    for local checkpoints only. revision: the repo's branch, tag or commit (None = the default branch).
    """

    def __init__(self, root: str | Path, repo_id: str | None = None, revision: str | None = None) -> None:
        self.root = Path(root)
        self.repo_id = check_repo_id(repo_id) if repo_id else None
        self.revision = revision or None

    @classmethod
    def from_env(cls, default_root: str | Path = DEFAULT_CHECKPOINTS) -> CheckpointResolver:
        """The resolver the environment asks for: I3AD_CHECKPOINTS (else ``default_root``), I3AD_HUB_REPO,
        I3AD_HUB_REVISION."""
        return cls(
            os.environ.get(ENV_CHECKPOINTS) or default_root,
            os.environ.get(ENV_HUB_REPO) or None,
            os.environ.get(ENV_HUB_REVISION) or None,
        )

    def __repr__(self) -> str:
        return f"CheckpointResolver(root={str(self.root)!r}, repo_id={self.repo_id!r}, revision={self.revision!r})"

    @contextlib.contextmanager
    def _asking_the_hub(self) -> Iterator[None]:
        """Turns what asking the Hub repo can raise into a CheckpointError that says what went wrong."""
        assert self.repo_id is not None
        where = f"Hub repo {self.repo_id!r}" + (f" at revision {self.revision!r}" if self.revision else "")
        try:
            yield
        except RevisionNotFoundError:
            raise CheckpointError(f"{where}: no such revision (check {ENV_HUB_REVISION})") from None
        except GatedRepoError:  # (a kind of RepositoryNotFoundError, so before it)
            raise CheckpointError(f"{where} is gated: accept its conditions on the Hub, then set HF_TOKEN") from None
        except RepositoryNotFoundError:
            raise CheckpointError(
                f"{where} was not found, or is private: check {ENV_HUB_REPO}, and set HF_TOKEN for a private repo"
            ) from None
        except (HfHubHTTPError, LocalEntryNotFoundError) as error:
            # No network and nothing cached, offline mode with an incomplete cache, other Hub errors.
            raise CheckpointError(f"could not get checkpoints from {where}: {error_summary(error)}") from None
        except Exception as error:  # the HTTP client's own errors (a dropped connection) or a cache folder's OSError
            raise CheckpointError(
                f"could not get checkpoints from {where}: {error_summary(error)} (network, or the cache folder "
                "HF_HOME / HF_HUB_CACHE)"
            ) from None

    def _download(self, patterns: list[str]) -> Path:
        """The cached snapshot folder of the repo holding (at least) the files matching ``patterns``."""
        with self._asking_the_hub():
            return Path(snapshot_download(self.repo_id, revision=self.revision, allow_patterns=patterns))

    def hub_checkpoints(self) -> dict[str, list[str]] | None:
        """{category: [variant, ...]} of the Hub repo (only the small detector.json files are fetched); {} without
        a repo, and None with a logged warning when the repo cannot be reached and is not cached."""
        if self.repo_id is None:
            return {}
        try:
            return list_checkpoints(self._download([f"*/*/{DETECTOR_FILE}"]))
        except CheckpointError as error:
            logger.warning("%s", error)
            return None

    def listing(self) -> CheckpointListing:
        """Every checkpoint, local or in the Hub repo, sorted by category, and whether the repo (if any) could be
        listed."""
        found = list_checkpoints(self.root)
        on_hub = self.hub_checkpoints()
        for category, variants in (on_hub or {}).items():
            found[category] = sorted(set(found.get(category, [])) | set(variants))
        return CheckpointListing(dict(sorted(found.items())), complete=on_hub is not None)

    def resolve(self, category: str, variant: str) -> Path:
        """The folder of checkpoint ``category/variant``: the local one if present, else downloaded from the Hub.
        Raises CheckpointError naming where it looked when neither has it."""
        check_name("category", category)
        check_name("variant", variant)
        local = self.root / category / variant
        if (local / DETECTOR_FILE).is_file():
            return local
        if self.repo_id is None:
            have = _describe(list_checkpoints(self.root))
            raise CheckpointError(
                f"no checkpoint {category}/{variant} under {self.root} (have: {have}); "
                f"set {ENV_HUB_REPO} to a Hub repo to download checkpoints"
            )
        folder = self._download(_hub_patterns(category, variant)) / category / variant
        missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
        if missing and (folder / DETECTOR_FILE).is_file():  # listed (the listing reads detector.json) but not whole
            raise CheckpointError(
                f"Hub repo {self.repo_id!r} holds an incomplete checkpoint {category}/{variant} (it lacks "
                f"{', '.join(missing)}): upload it again"
            )
        if missing:
            raise CheckpointError(
                f"no checkpoint {category}/{variant} under {self.root} nor in Hub repo {self.repo_id!r} "
                f"(missing {', '.join(missing)}; the repo has: {_describe_hub(self.hub_checkpoints())})"
            )
        return folder

    def load(self, category: str, variant: str, device: torch.device | str = "cpu") -> AnomalyDetector:
        """Resolve and load a checkpoint (safetensors weights only). A file of a Hub checkpoint that is damaged in the
        cache (it cannot be read or decoded) is removed from it and downloaded again, if the Hub can be reached.
        Raises CheckpointError."""
        folder = self.resolve(category, variant)
        try:
            return load_checkpoint(folder, device)
        except DamagedFileError as error:
            if folder == self.root / category / variant:
                raise
            damaged = error
        try:  # before anything is removed: offline, the damaged copy is still better than none
            with self._asking_the_hub():
                HfApi().repo_info(self.repo_id, revision=self.revision)
        except CheckpointError as error:
            raise CheckpointError(
                f"{damaged}; it cannot be downloaded again now ({error}): try again online, or delete it from the "
                "cache (HF_HOME / HF_HUB_CACHE)"
            ) from None
        logger.warning("%s: downloading it from the Hub again", damaged)
        try:
            _remove_cached_file(damaged.path)
        except OSError as error:  # e.g. a shared cache this user may only read
            raise CheckpointError(f"{damaged}; removing it from the cache failed ({error.strerror or error})") from None
        folder = self._download(_hub_patterns(category, variant)) / category / variant
        try:
            return load_checkpoint(folder, device)
        except DamagedFileError as error:
            raise CheckpointError(f"{error} (downloaded again: the Hub's copy is damaged)") from None


def _remove_cached_file(path: Path) -> None:
    """Remove a file from the Hub cache: its entry in a snapshot folder and the stored file it links to (the same
    bytes wherever else they are linked from, so damaged there too); a cache without links holds the file itself."""
    stored = Path(os.path.realpath(path))
    path.unlink(missing_ok=True)
    stored.unlink(missing_ok=True)


def upload_checkpoints(
    root: str | Path,
    repo_id: str,
    *,
    categories: list[str] | None = None,
    variants: list[str] | None = None,
    private: bool = False,
    token: str | None = None,
) -> list[str]:
    """Upload checkpoint folders ``root/<category>/<variant>/`` to the Hub model repo ``repo_id`` (created if
    needed) in one commit, at the same paths. Returns the uploaded ``category/variant`` names.

    categories / variants: only these (default: all under ``root``). token: default the logged-in user's.
    private: create the repo as private; an existing public repo is refused rather than uploaded to.
    """
    check_repo_id(repo_id)
    found = list_checkpoints(root)
    if not found:
        raise CheckpointError(f"no checkpoints under {root} (expected <category>/<variant>/{DETECTOR_FILE})")
    for category in categories or []:
        check_name("category", category)
        if category not in found:
            raise CheckpointError(f"no checkpoint of category {category!r} under {root} (have: {_describe(found)})")
    searched = {c: names for c, names in found.items() if not categories or c in categories}
    for variant in variants or []:
        check_name("variant", variant)
        if not any(variant in names for names in searched.values()):
            raise CheckpointError(f"no checkpoint named {variant!r} under {root} (have: {_describe(searched)})")
    chosen = [(c, v) for c, names in searched.items() for v in names if not variants or v in variants]
    for category, variant in chosen:  # a checkpoint that cannot load (e.g. a partial copy) is not published
        load_checkpoint(Path(root) / category / variant)
    uploaded = [f"{c}/{v}" for c, v in chosen]
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        # create_repo leaves an existing repo's visibility as it is, so a private upload could land in public.
        refused_as_public = private and not api.model_info(repo_id).private
        if not refused_as_public:
            api.upload_folder(
                repo_id=repo_id,
                folder_path=root,
                allow_patterns=[pattern for c, v in chosen for pattern in _hub_patterns(c, v)],
                commit_message=f"Upload i3ad checkpoints: {', '.join(uploaded)}",
            )
    except HfHubHTTPError as error:
        summary = error_summary(error)
        raise CheckpointError(
            f"upload to Hub repo {repo_id!r} failed: {summary} (log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except Exception as error:  # offline mode, or a failed name lookup or connection (the HTTP client's own errors)
        summary = error_summary(error)
        raise CheckpointError(
            f"upload to Hub repo {repo_id!r} failed: {summary} (is the network up, and HF_HUB_OFFLINE unset?)"
        ) from None
    if refused_as_public:
        raise CheckpointError(
            f"Hub repo {repo_id!r} exists and is public, and a private upload was asked for: nothing was uploaded. "
            "Make the repo private on the Hub first (its settings), or upload without --private"
        )
    return uploaded
