"""Paths that are local or remote (``gs://bucket/run``, or any scheme ``tf.io.gfile`` knows).

Local paths use plain ``os``/``open`` exactly as before (no TensorFlow import); a path with a
``scheme://`` prefix goes through ``tf.io.gfile``. Checkpoints do not use this module: orbax
reads and writes ``gs://`` itself (through etils.epath and tensorstore). See
docs/remote_paths.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from typing import IO, Any

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class WorkdirError(OSError):
    """A workdir (local or remote) that cannot be created or written; the message says why."""


def is_remote(path: str) -> bool:
    """Whether ``path`` has a ``scheme://`` prefix (``gs://``, ``s3://``, ``ram://``, ...)."""
    return bool(_SCHEME.match(os.fspath(path)))


def _gfile() -> Any:
    import tensorflow as tf  # lazy: only remote paths pay the import

    return tf.io.gfile


def absolute(path: str) -> str:
    """Local: ``~`` expanded and made absolute; remote: unchanged (abspath would mangle it)."""
    path = os.fspath(path)
    if is_remote(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
    """``os.path.join`` for local paths; ``/``-joined for remote ones (also on Windows)."""
    if is_remote(path):
        return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(path, *parts)


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    """Creates ``path`` and its parents; no error if it exists."""
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def read_text(path: str) -> str:
    if is_remote(path):
        with _gfile().GFile(path, "r") as f:
            return f.read()
    with open(path) as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    """Replaces the file's content: written to a temporary name, then renamed over ``path``, so
    a reader (or a kill) never sees half a file. Remote too: TensorFlow's ``ram://`` does not
    truncate on "w", and on GCS the rename is a server-side copy of a small file."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if is_remote(path):
        gfile = _gfile()
        try:
            with gfile.GFile(tmp, "w") as f:
                f.write(text)
            gfile.rename(tmp, path, overwrite=True)
        except BaseException:
            with contextlib.suppress(Exception):
                gfile.remove(tmp)
            raise
        return
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def open_append(path: str) -> IO[str]:
    """A text handle that appends to ``path`` (created if missing).

    Remote: TensorFlow's append mode; on GCS (immutable objects) it downloads the existing
    file once and re-uploads the whole file on every ``flush()``/``close()``, so keep the handle
    open and flush now and then rather than reopening it per line.
    """
    if is_remote(path):
        return _gfile().GFile(path, "a")
    return open(path, "a")


def append_text(path: str, text: str) -> None:
    """Appends ``text`` (remote: a whole-file rewrite per call on GCS; see :func:`open_append`)."""
    with open_append(path) as f:
        f.write(text)


def _is_filesystem_error(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return True
    try:  # TensorFlow's errors (UnimplementedError, PermissionDeniedError, ...) are not OSErrors
        import tensorflow as tf
    except ImportError:  # pragma: no cover - tensorflow is a dependency
        return False
    return isinstance(e, tf.errors.OpError)


def ensure_writable_dir(path: str, what: str = "--workdir") -> None:
    """Creates ``path``, or raises :class:`WorkdirError` that names it and the fix.

    Called once before a run touches its workdir, so an unknown scheme, a missing bucket or
    missing credentials fail here with one message instead of a traceback deep in a writer.
    """
    try:
        makedirs(path)
    except Exception as e:
        if not _is_filesystem_error(e):
            raise
        reason = getattr(e, "message", None) or str(e) or type(e).__name__
        hint = "check the path and its permissions"
        if is_remote(path):
            scheme = path.split("://", 1)[0]
            hint = (
                "check the bucket name and credentials (gcloud auth application-default login, "
                "or GOOGLE_APPLICATION_CREDENTIALS)"
                if scheme == "gs"
                else f"check that tf.io.gfile supports {scheme}:// here, and its credentials"
            )
        raise WorkdirError(f"cannot write to {path} ({reason}): {hint}; or use a local {what}") \
            from e
