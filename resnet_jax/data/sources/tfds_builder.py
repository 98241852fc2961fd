"""A tfds builder ready to read: found by name (with close names suggested when it is not one),
and downloaded and prepared when it is not yet (``imagenet2012`` from its manual download),
with an offline machine told in about a second; every failure is one ``DataError`` line."""

from __future__ import annotations

import logging
import os
import urllib.parse

from resnet_jax.data.sources.base import DIGITS, FOLDER, DataError

log = logging.getLogger(__name__)

IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def prepared_builder(name: str, data_dir: str | None, download: bool, manual_dir: str | None):
    """The tfds builder of ``name`` in ``data_dir``; an unprepared dataset is downloaded and
    prepared first unless ``download=False`` (see ``sources.tfds_source``)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
        # ValueError: a malformed name ("cifar-10") or an unknown config ("cifar10/foo").
        raise DataError(
            f"unknown dataset {name!r}: not a tfds dataset name and not one of "
            f"{FOLDER!r}, {DIGITS!r}{_did_you_mean(name)} (tfds says: "
            f"{_short(str(e).strip().splitlines()[0].rstrip(':'))})"
        ) from None
    if not builder.info.splits:
        if not download:
            raise _download_forbidden(builder, name, manual_dir)
        _prepare(builder, name, manual_dir)
        if not builder.info.splits:  # tfds returned without error but wrote nothing usable
            raise DataError(
                f"tfds dataset {name!r}: download_and_prepare finished but no splits are "
                f"prepared in {os.fspath(builder.data_dir_root)!r}"
            )
    return builder


def _download_forbidden(builder, name: str, manual_dir: str | None) -> DataError:
    """The error for an unprepared dataset with ``download=False``, naming the ways out."""
    hint = ""
    if name.startswith("imagenet2012"):
        hint = (
            f" ImageNet needs a manual download: put {' and '.join(IMAGENET_MANUAL_FILES)}"
            f" in {_manual_dir(builder, manual_dir)} and allow download once."
        )
    return DataError(
        f"tfds dataset {name!r} is not prepared in data_dir "
        f"{os.fspath(builder.data_dir_root)!r} and download=False (train.py: "
        f"--config.dataset_options.download=False) forbids preparing it: allow "
        f"download, or point data_dir at a tfds data_dir where it is prepared." + hint
    )


def _did_you_mean(name: str) -> str:
    """``; did you mean 'a', 'b'?`` with the registered tfds names closest to ``name``."""
    import difflib

    import tensorflow_datasets as tfds

    try:  # the names tfds ships (no community index: that would need the network)
        known = tfds.list_builders(with_community_datasets=False)
    except Exception:  # a suggestion is optional; never hide the real error behind another
        return ""
    base = name.split("/")[0].split(":")[0].lower().replace("-", "_")
    close = difflib.get_close_matches(base, known, n=3, cutoff=0.75)
    if not close:
        return ""
    quoted = [repr(c) for c in close]
    listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f"; did you mean {listed}?"


def _manual_dir(builder, manual_dir: str | None) -> str:
    return manual_dir or os.path.join(builder.data_dir_root, "downloads", "manual")


# tfds retries a failed connection 10 times with backoff (~200 s offline); one request with
# this timeout (connect, read) tells an offline machine in about a second.
_REACHABLE_TIMEOUT_S = (5.0, 10.0)
_DOWNLOAD_HINT = (
    "prepare it where there is internet and point --config.data_dir at that tfds data_dir, "
    "or use an image folder (--config.dataset=folder --config.data_dir=<root with "
    "train/<class>/*.jpg>)"
)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cause(e: BaseException) -> str:
    """What went wrong, in one short line: for a failed connection what urllib3 says failed
    (DNS, refused, timeout) without the connection's repr, else ``Type: first line``."""
    # requests wraps urllib3's MaxRetryError, whose .reason is the real failure.
    reason = getattr(e.args[0] if e.args else None, "reason", None)
    if reason is not None:
        text = str(reason)
        if text.startswith(("HTTPConnection(", "HTTPSConnection(", "<urllib3")) and "): " in text:
            text = text.split("): ", 1)[1]  # drop the connection object's repr
        return _short(text.strip().splitlines()[0] if text.strip() else type(reason).__name__)
    lines = str(e).strip().splitlines()
    return _short(f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__)


def _unreachable(builder) -> str | None:
    """Why the first of the builder's download URLs cannot be reached, or None (reachable, or
    nothing to check). Any HTTP answer counts as reachable; only a failed connection does not."""
    import requests

    try:
        urls = list(getattr(builder, "url_infos", None) or ())
    except Exception:  # no checksums file: nothing to check, the download itself will tell
        return None
    if not urls or not urls[0].startswith(("http://", "https://")):
        return None
    try:
        requests.head(urls[0], timeout=_REACHABLE_TIMEOUT_S, allow_redirects=False).close()
    except (requests.ConnectionError, requests.Timeout) as e:
        return _short(f"cannot reach {urllib.parse.urlsplit(urls[0]).hostname}: {_cause(e)}")
    return None


def _prepare(builder, name: str, manual_dir: str | None) -> None:
    """``builder.download_and_prepare`` with failures turned into one ``DataError`` line."""
    import requests
    import tensorflow_datasets as tfds

    mdir = _manual_dir(builder, manual_dir)
    where = os.fspath(builder.data_dir_root)
    if name.startswith("imagenet2012"):
        missing = [f for f in IMAGENET_MANUAL_FILES if not os.path.exists(os.path.join(mdir, f))]
        if missing:
            raise DataError(
                f"imagenet2012 manual download missing: {missing} not found in {mdir!r}. "
                "Download them from image-net.org (tfds cannot) and retry, or pass "
                "manual_dir=<folder holding them> (train.py: "
                "--config.dataset_options.manual_dir=<folder>)."
            )
    else:
        offline = _unreachable(builder)
        if offline is not None:
            raise DataError(
                f"tfds dataset {name!r} is not prepared in {where!r} and could not be "
                f"downloaded ({offline}); this machine may be offline: {_DOWNLOAD_HINT}"
            )
    log.info("downloading and preparing tfds dataset %r in %s", name, where)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=mdir))
    except Exception as e:  # every failure becomes the one-line DataError
        network = (
            requests.ConnectionError, requests.Timeout, ConnectionError,
            tfds.download.DownloadError,
        )  # fmt: skip
        why = (
            f"this machine may be offline: {_DOWNLOAD_HINT}"
            if isinstance(e, network)
            else f"fix the cause and retry (nothing half-prepared is kept), or {_DOWNLOAD_HINT}"
        )
        raise DataError(
            f"tfds dataset {name!r} is not prepared in {where!r} and could not be downloaded "
            f"and prepared ({_cause(e)}); {why}"
        ) from e

