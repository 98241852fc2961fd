"""Downloading weight files once: a verified cache, like ``torch.hub``'s.

``fetch(url, file_name, sha256)`` returns a local path. Files live in
``$RESNET_JAX_CACHE/weights`` (default ``~/.cache/resnet_jax/weights``); a copy that torch.hub
already downloaded (``$TORCH_HOME/hub/checkpoints/<file>``) is used in place when a hash can
confirm it is the same file. A download goes to a temporary file in the cache directory and is
renamed only once complete and its SHA-256 matches, so an interrupted or corrupted download is
never used. ``sha256`` may be the full hash
or a prefix (torchvision names its files ``<name>-<first 8 hex digits of the SHA-256>.pth`` and
checks only that prefix); empty means the source publishes none (only the length is checked).
Every cached file is hashed again when used, so a file damaged on disk is refused too.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CONNECT_TIMEOUT_S = 5.0  # offline: fail within seconds rather than retry for minutes
_CHUNK = 1 << 20


class DownloadError(ValueError):
    """A weight file cannot be downloaded, or it is not the file the registry names."""


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``<$RESNET_JAX_CACHE or ~/.cache/resnet_jax>/weights``
    (the project cache that also holds the oneDNN extension)."""
    from resnet_jax.models.onednn import cache_dir as project_cache

    return project_cache() / "weights"


def torch_hub_dir() -> Path:
    """torch.hub's checkpoint directory (``$TORCH_HOME/hub/checkpoints``, torch's default)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "torch",
    )
    return Path(home) / "hub" / "checkpoints"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(path: Path, sha256: str) -> str:
    """'' if ``path``'s SHA-256 starts with ``sha256`` (or none is expected), else both hashes."""
    if not sha256:
        return ""
    actual = sha256_of(path)
    if actual.startswith(sha256.lower()):
        return ""
    return f"SHA-256 {actual}, expected {sha256}{'...' if len(sha256) < 64 else ''}"


def _check_cached(path: Path, sha256: str) -> None:
    if problem := _mismatch(path, sha256):
        raise DownloadError(
            f"cached file {path} has {problem}: it is corrupt or not the published file; "
            "delete it to download it again"
        )


def fetch(url: str, file_name: str, sha256: str = "", *, progress: bool | None = None) -> Path:
    """The local path of ``url``'s file, downloading it into the cache if needed (see the module
    docstring). Raises :class:`DownloadError` with one line saying what to do."""
    cached = cache_dir() / file_name
    if cached.is_file():
        _check_cached(cached, sha256)
        return cached
    from_torch = torch_hub_dir() / Path(url).name
    if sha256 and from_torch.is_file():  # torch.hub names files by URL basename: verify to reuse
        _check_cached(from_torch, sha256)
        return from_torch
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _download(url, cached, sha256, sys.stderr.isatty() if progress is None else progress)
    except (PermissionError, FileNotFoundError, NotADirectoryError) as e:
        raise DownloadError(
            f"cannot write the weights cache {cached.parent} ({e.strerror}); set "
            "RESNET_JAX_CACHE to a writable directory"
        ) from None
    return cached


def _download(url: str, dest: Path, sha256: str, progress: bool) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            received, total = _copy(url, out, progress, dest)
        if total is not None and received != total:
            raise DownloadError(
                f"download of {url} was interrupted ({received:,} of {total:,} bytes); "
                "run again to retry"
            )
        if problem := _mismatch(tmp, sha256):
            raise DownloadError(
                f"downloaded {dest.name} from {url} has {problem}: not the published file "
                f"(a proxy's error page, or the upload changed); nothing was saved to {dest}"
            )
        os.replace(tmp, dest)  # atomic: the cache only ever holds complete, verified files
    finally:
        tmp.unlink(missing_ok=True)


def _copy(url: str, out, progress: bool, dest: Path) -> tuple[int, int | None]:
    """Streams ``url`` into ``out``: (bytes received, Content-Length or None)."""
    request = urllib.request.Request(url, headers={"User-Agent": "resnet-jax"})
    try:
        response = urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"cannot download {url} ({reason}); without network, download that file elsewhere "
            f"and put it at {dest} (see docs/models.md#pretrained-weights)"
        ) from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received, start, shown = 0, time.monotonic(), 0.0
        try:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                if progress and time.monotonic() - shown > 0.2:
                    shown = time.monotonic()
                    _show(url, received, total, shown - start)
        except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
            raise DownloadError(
                f"download of {url} was interrupted after {received:,} bytes ({e}); "
                "run again to retry"
            ) from None
        if progress:
            _show(url, received, total, time.monotonic() - start)
            print(file=sys.stderr)
    return received, total


def _show(url: str, received: int, total: int | None, seconds: float) -> None:
    mb = received / 1e6
    rate = f"{mb / seconds:.1f} MB/s" if seconds > 0 else ""
    if total:
        width = 30
        done = int(width * received / total)
        bar = f"[{'#' * done}{'.' * (width - done)}] {mb:.1f}/{total / 1e6:.1f} MB"
    else:
        bar = f"{mb:.1f} MB"
    print(f"\r{Path(url).name}: {bar} {rate}   ", end="", file=sys.stderr, flush=True)
