"""Hugging Face hub access that fails fast when weights cannot be had.

huggingface_hub retries an unreachable hub for about 20 s per file; on an
offline machine a user should instead learn within seconds which file is
missing and how to provide it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache

from ..errors import WeightsError, first_line

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return flag in {"1", "ON", "YES", "TRUE"} or bool(hf_constants.is_offline_mode())


def hub_unreachable_reason(timeout: float = 3.0, url: str | None = None) -> str | None:
    """Why the hub (or the server of ``url``) cannot be reached right now, or None when it can (or a proxy decides).

    The name lookup runs in a daemon thread so that a resolver that hangs is
    abandoned after ``timeout`` instead of delaying the answer; then a TCP
    connection is tried with the same timeout.
    """
    if _offline():
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None  # through a proxy, a direct lookup says nothing
    endpoint = url or os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (80 if parsed.scheme == "http" else 443)
    addresses: list = []
    failure: list[str] = []

    def look_up() -> None:
        try:
            addresses.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as error:
            failure.append(error.strerror or str(error))

    thread = threading.Thread(target=look_up, daemon=True)
    thread.start()
    thread.join(timeout)
    if not addresses:
        return f"cannot resolve {host}: {failure[0] if failure else 'no answer'}"
    family, kind, proto, _, address = addresses[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.settimeout(timeout)
            probe.connect(address)
    except OSError as error:
        return f"cannot connect to {host}: {error.strerror or error}"
    return None


def cached_hub_file(repo_id: str, filenames: list[str]) -> Path | None:
    """The first of ``filenames`` already in the local hub cache, if any."""
    for filename in filenames:
        hit = try_to_load_from_cache(repo_id, filename)
        if isinstance(hit, str):
            return Path(hit)
    return None


def cached_snapshot(repo_id: str, patterns: list[str], check: Callable[[Path], Any]) -> Path | None:
    """``repo_id``'s snapshot (the files matching ``patterns``) when the hub cache holds it whole and ``check``
    accepts it, without asking the hub; else None (not cached, cached in part, or damaged)."""
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        check(folder)
        return folder
    except Exception:  # not cached, or cached in part
        return None


def _unavailable(what: str, reason: str, fix: str) -> str:
    return f"{what} is not available locally and could not be downloaded ({reason}); {fix}"


def require_hub_files(repo_id: str, filenames: list[str], what: str, fix: str) -> None:
    """Raise a one-line :class:`WeightsError` now unless a download can succeed.

    Passes when one of ``filenames`` is cached or the hub answers; otherwise
    the message names ``what`` is missing, why, and ``fix``.
    """
    if cached_hub_file(repo_id, filenames) is not None:
        return
    reason = hub_unreachable_reason()
    if reason is not None:
        raise WeightsError(_unavailable(what, reason, fix))


@dataclass(frozen=True)
class MissingFile:
    """A file the models need that is not on this machine: what it is, how to get it, whether a download from the
    hub would fetch it (original SAM's checkpoints and spaCy's models never are), and whether its own loader
    refuses it at once, before any model loads (spaCy's parser), so that alone it needs no refusal here."""

    what: str
    fix: str
    downloadable: bool = True
    reported_by_loader: bool = False


def require_files(missing: list[MissingFile]) -> None:
    """Before any model loads: one :class:`WeightsError` naming every missing file that cannot be had now.

    Offline, loading the models one after the other would name one missing
    file per attempt; this names them all at once. A file that can be
    downloaded now is left to its loader; a file that is never downloaded is
    named even online (the models before it would load for nothing), except
    a spaCy model alone (its loader says how to install it, at once). One
    file is one line; several are one line each.
    """
    reason = hub_unreachable_reason() if any(file.downloadable for file in missing) else None
    stuck = [file for file in missing if not file.downloadable or reason is not None]
    if all(file.reported_by_loader for file in stuck):
        return
    if len(stuck) == 1:
        file = stuck[0]
        raise WeightsError(_unavailable(file.what, reason, file.fix) if file.downloadable
                           else f"{file.what} is not on this machine; {file.fix}")
    listed = "".join(f"\n  {file.what}: {file.fix}" for file in stuck)
    why = f", and none can be downloaded now ({reason})" if reason is not None else ""
    raise WeightsError(f"{len(stuck)} files the models need are not on this machine{why}; provide each, then run "
                       f"again:{listed}")


def download_hub_file(repo_id: str, filename: str, what: str, fix: str) -> Path:
    """Download ``filename`` from ``repo_id`` into the Hugging Face cache (progress bar on a terminal).

    The cache is where :func:`cached_hub_file` finds it on later runs, offline too.
    """
    require_hub_files(repo_id, [filename], what, fix)
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as error:  # any network or hub failure is the same problem for the user
        raise WeightsError(f"{what} could not be downloaded ({first_line(error)}); {fix}") from None


def package_root() -> Path:
    """The folder holding the ``globallocal`` package (the repository root in a clone)."""
    return Path(__file__).resolve().parents[2]


def weights_folders(name: str) -> list[Path]:
    """Where a default weights folder such as ``freesolo_weights`` is looked for, in order.

    The working folder first (where a user who reads ``--help`` puts it), then
    the folder next to the installed package (the clone's root).
    """
    folders = [Path.cwd() / name, package_root() / name]
    return [folder for i, folder in enumerate(folders) if folder.resolve() not in {f.resolve() for f in folders[:i]}]


def find_in_weights_folders(name: str, filename: str) -> Path | None:
    """The first ``FOLDER/filename`` of :func:`weights_folders` that exists."""
    for folder in weights_folders(name):
        if (folder / filename).is_file():
            return folder / filename
    return None


def download_url_file(url: str, target: Path, what: str, fix: str) -> Path:
    """Download ``url`` to the file ``target`` (progress bar on a terminal), failing fast when offline.

    The same rule as for hub files: HF_HUB_OFFLINE or an unreachable server is
    a one-line :class:`WeightsError` within seconds. The file appears at
    ``target`` only when complete (torch writes a temporary file and renames it).
    """
    reason = hub_unreachable_reason(url=url)
    if reason is not None:
        raise WeightsError(f"{what} is not available locally and could not be downloaded ({reason}); {fix}")
    import torch  # here: the checks above run before the command line imports torch

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as error:  # any network failure is the same problem for the user
        raise WeightsError(f"{what} could not be downloaded ({first_line(error)}); {fix}") from None
    return target
