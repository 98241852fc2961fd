"""Checkpoints with orbax: keep the last k and the best by eval top-1, async, preemption-safe.

A checkpoint is a step directory ``<dir>/<step>/`` with two items: ``state`` (the TrainState:
step, params, optimizer state, BN statistics, RNG, loss scale) and ``meta`` (JSON: the resolved
config, the model name and the data position). Orbax writes each step into a temporary
directory and renames it only when every file (and, multi-host, every process) is done, so a
save interrupted by a kill is never listed by :meth:`Checkpointer.latest_step`; leftovers are
removed on the next start.

Restoring checks the saved tree (paths and shapes) against the target first and raises
:class:`CheckpointMismatchError` listing the differences, instead of a partial load.

Damage (files truncated or deleted by storage faults or interrupted copies, garbled metadata, a
step directory without orbax's ``commit_success.txt``, a flipped bit) is reported as
:class:`CheckpointDamagedError`: ``meta`` records a CRC-32 of every array's bytes at save time,
checked after every full restore. :meth:`Checkpointer.newest_usable_step` is how a resume finds
the newest checkpoint that reads completely; damaged newer ones are renamed aside
(``<step>.damaged-<time>``, a name orbax ignores), never deleted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from resnet_jax import fs

PyTree = Any


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model/config it is restored into."""


class CheckpointDamagedError(RuntimeError):
    """A checkpoint step cannot be read completely (files missing or truncated, metadata garbled
    or inconsistent, no commit marker, or an array whose checksum differs)."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"step {step}: {reason}")
        self.step, self.reason = step, reason


class NoUsableCheckpointError(ValueError):
    """Checkpoints exist, but none reads completely."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (disk full, permissions); earlier ones are intact."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` or anything in its cause/context chain is ENOSPC (orbax and tensorstore
    re-raise the OSError of a full disk wrapped in their own exceptions)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or "ENOSPC" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


COMMIT_MARKER = "commit_success.txt"  # written by orbax last, in the step and in each item
CHECKSUMS = "checksums"  # meta key: {"params/conv1/kernel": crc32 of the array's bytes, ...}
DAMAGED = ".damaged-"  # <step>.damaged-<time>: set aside; orbax's step names are digits only


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "..."


_READ_SYMPTOMS = {  # tensorstore's words -> ours
    "is not valid for value of size": "file shorter than expected (truncated)",
    "Truncated": "data truncated or missing",
    "NOT_FOUND": "file missing",
    "DATA_LOSS": "data corrupt",
}


def describe_read_error(error: BaseException) -> str:
    """One short line for an orbax/tensorstore read failure: which array, what symptom."""
    text = _first_line(error)
    array = re.search(r'Error reading "([^"/]+)', text)
    if array is None:
        return text
    symptom = next((ours for theirs, ours in _READ_SYMPTOMS.items() if theirs in str(error)),
                   text.split(":")[0])
    return f"cannot read {array.group(1).replace('.', '/')}: {symptom}"


def _is_closed_loop_noise(unraisable: Any) -> bool:
    """tensorstore's callbacks still in flight when a failed orbax read closes its event loop
    report ``RuntimeError: Event loop is closed`` as unraisable: harmless, but 100s of lines."""
    error = unraisable.exc_value
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _is_unretrieved_read_error(record: logging.LogRecord) -> bool:
    """asyncio's "Task exception was never retrieved" for the sibling reads of a failed one
    (logged when the task is collected, maybe at exit): the failure was already reported."""
    error = record.exc_info[1] if record.exc_info else None
    return str(record.msg).startswith("Task exception was never retrieved") and (
        "tensorstore_spec" in str(error))


def _quiet_closed_loop_noise() -> None:
    """Silences the echoes of a failed tensorstore read (only those)."""
    previous = sys.unraisablehook
    if getattr(previous, "_resnet_jax_quiet", False):
        return
    logging.getLogger("asyncio").addFilter(lambda r: not _is_unretrieved_read_error(r))

    def hook(unraisable: Any) -> None:
        if not _is_closed_loop_noise(unraisable):
            previous(unraisable)

    hook._resnet_jax_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _crc(x: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(x).reshape(-1).view(np.uint8))


def checksums(tree: PyTree) -> dict[str, int]:
    """CRC-32 of every (host) array leaf's bytes, by path (zlib's: ~2 GB/s, see
    benchmarks/checkpoint_integrity.py)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p, simple=True, separator="/"): _crc(x) for p, x in leaves}


def _host_copy(x: Any) -> np.ndarray:
    """One full copy of a restored leaf on the host (a replica's shard for replicated arrays)."""
    if isinstance(x, jax.Array) and not x.is_fully_replicated:
        return np.asarray(x) if x.is_fully_addressable else None  # type: ignore[return-value]
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_shards[0].data)
    return np.asarray(x)


def verify_checksums(step: int, tree: PyTree, meta: Mapping[str, Any]) -> None:
    """Raises CheckpointDamagedError if an array's bytes differ from those saved (checkpoints
    written before checksums were recorded, and arrays not held whole here, are not checked)."""
    saved = meta.get(CHECKSUMS)
    if not saved:
        return
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for p, x in leaves:
        key = jax.tree_util.keystr(p, simple=True, separator="/")
        if key not in saved:
            continue
        host = _host_copy(x)
        if host is not None and _crc(host) != saved[key]:
            raise CheckpointDamagedError(step, f"{key} does not match its checksum (bit rot?)")


def tree_signature(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """``{"params/Conv_0/kernel": shape, ...}`` for every array leaf of a tree or its metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(p, simple=True, separator="/"): tuple(getattr(x, "shape", np.shape(x)))
        for p, x in leaves
    }


def describe_mismatch(
    saved: Mapping[str, tuple], target: Mapping[str, tuple], limit: int = 8
) -> list[str]:
    """Human-readable differences between two tree signatures (empty if they match)."""
    out = []
    missing = sorted(set(target) - set(saved))
    extra = sorted(set(saved) - set(target))
    if missing:
        out.append(f"{len(missing)} arrays not in the checkpoint, e.g. {missing[:limit]}")
    if extra:
        out.append(
            f"{len(extra)} arrays in the checkpoint but not in the model, e.g. {extra[:limit]}"
        )
    shapes = [
        f"{k}: checkpoint {saved[k]} vs model {target[k]}"
        for k in sorted(set(saved) & set(target))
        if tuple(saved[k]) != tuple(target[k])
    ]
    if shapes:
        out.append(f"{len(shapes)} shape mismatches, e.g. {shapes[:limit]}")
    return out


class Checkpointer:
    """Saves and restores the training state under ``directory``."""

    def __init__(
        self,
        directory: str,
        *,
        keep: int = 3,
        keep_best: bool = True,
        async_save: bool = True,
        read_only: bool = False,
        checksums: bool = True,
    ):
        """``checksums=False``: neither record nor verify them (to measure their cost)."""
        # gs://... is passed to orbax unchanged: it reads and writes GCS itself (etils.epath).
        self.directory = fs.absolute(directory)
        self.checksums = checksums
        keepers: list = [policies.LatestN(n=keep)]
        if keep_best:
            keepers.append(
                policies.BestN(
                    get_metric_fn=lambda m: m["eval_top1"],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keepers),
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
        )
        # Explicit handlers: a fresh process can read metadata before any save or restore.
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.PyTreeCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint (half-written ones are never listed)."""
        return self._mgr.latest_step()

    def best_step(self) -> int | None:
        """The checkpoint with the highest eval top-1 among those saved with metrics."""
        return self._mgr.best_step()

    def save(
        self,
        step: int,
        state: PyTree,
        meta: dict[str, Any],
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Starts saving ``state`` (host arrays) at ``step``; returns once the arrays are
        copied. ``meta`` gains the arrays' checksums."""
        if self.checksums:
            meta = {**meta, CHECKSUMS: checksums(state)}
        with self._write_errors(step):
            self._mgr.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)
                ),
                metrics=metrics,
                force=True,
            )

    @contextlib.contextmanager
    def _write_errors(self, step: int | None) -> Iterator[None]:
        """A failed write becomes one CheckpointSaveError that says what is still safe."""
        try:
            yield
        except Exception as e:
            if not (is_disk_full(e) or isinstance(e, OSError)):
                raise
            kept = [s for s in self._mgr.all_steps(read=True) if s != step]
            what = "disk full" if is_disk_full(e) else f"cannot write ({e})"
            which = f"step {step}" if step is not None else "a checkpoint"
            raise CheckpointSaveError(
                f"{what} while saving {which} to {self.directory}; "
                + (f"the earlier checkpoints (steps {kept}) are intact" if kept
                   else "no earlier checkpoint exists")
                + ": free space (or use another --workdir) and run the same command again to "
                "resume"
            ) from e

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        with self._read_errors(step):
            meta = self._mgr.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )["meta"]
            if not isinstance(meta, dict) or meta.get("step", step) != step:
                raise CheckpointDamagedError(step, "its meta JSON belongs to another step")
        return meta

    def signature(self, step: int) -> dict[str, tuple[int, ...]]:
        with self._read_errors(step):
            return tree_signature(self._mgr.item_metadata(step)["state"])

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def check_files(self, step: int) -> None:
        """Raises CheckpointDamagedError if ``step``'s commit markers or metadata files are
        missing or not JSON (cheap: no array data is read)."""
        root = self.step_path(step)
        for item in ("", "state", "meta"):
            if not os.path.exists(os.path.join(root, item, COMMIT_MARKER)):
                where = f"{item}/" if item else ""
                raise CheckpointDamagedError(step, f"no {where}{COMMIT_MARKER} (incomplete copy?)")
        for name in ("_CHECKPOINT_METADATA", "state/_METADATA", "meta/metadata"):
            try:
                with open(os.path.join(root, name)) as f:
                    json.load(f)
            except (OSError, ValueError) as e:
                raise CheckpointDamagedError(step, f"{name} unreadable ({_first_line(e)})") from e

    def read_fully(self, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every array of ``step`` as numpy, checksums verified, and its meta: the proof that a
        step is usable. Raises CheckpointDamagedError otherwise."""
        if not fs.is_remote(self.directory):
            self.check_files(step)
        meta = self.read_meta(step)
        with self._read_errors(step):
            md = self._mgr.item_metadata(step)["state"]
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), md)
            state = self._mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(item=md, restore_args=restore_args)
                ),
            )["state"]
        if self.checksums:
            verify_checksums(step, state, meta)
        return state, meta

    def set_aside(self, step: int) -> str:
        """Renames a damaged step to ``<step>.damaged-<UTC time>`` (kept for inspection; orbax
        no longer lists it) and returns the new path."""
        from etils import epath  # orbax's paths: local, or gs:// where the store can rename

        path = self.step_path(step) + DAMAGED + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        try:
            epath.Path(self.step_path(step)).rename(path)
        except Exception as e:
            raise NoUsableCheckpointError(
                f"checkpoint step {step} in {self.directory} is damaged and cannot be renamed "
                f"aside ({_first_line(e)}); move {self.step_path(step)} away by hand and run the "
                "same command again") from e
        self._mgr.reload()
        return path

    def newest_usable_step(self, log: Callable[[str], None]) -> int | None:
        """The newest step that reads completely (None if there is no checkpoint). Each newer,
        damaged step is logged in one line and set aside. Raises NoUsableCheckpointError if
        checkpoints exist but none reads.

        Multi-process: every process reads the same (shared) steps in the same order (orbax's
        restores are collective), then all take the oldest of their answers (one all-gather), so
        they resume from the same step; process 0 renames and logs.
        """
        usable, failures = self._scan()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            usable = int(np.min(multihost_utils.process_allgather(np.int64(usable))))
        if not usable:
            if failures:
                raise NoUsableCheckpointError(
                    f"no usable checkpoint in {self.directory}: "
                    + "; ".join(str(e) for e in failures)
                    + ". Nothing was changed; move the directory away (or use a new --workdir) "
                    "to start over, or restore the files")
            return None
        reasons = {e.step: e.reason for e in failures}
        newer = [s for s in self.all_steps() if s > usable]
        if newer and jax.process_index() == 0:
            for step in newer:
                path = self.set_aside(step)
                reason = reasons.get(step, "unreadable on another process")
                log(f"skipped damaged checkpoint step {step} ({reason}); moved to {path}; "
                    f"resuming from step {usable}")
        if newer and jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("resnet_jax_checkpoints_set_aside")
            self._mgr.reload()
        return usable

    def _scan(self) -> tuple[int, list[CheckpointDamagedError]]:
        """(the newest step that reads completely or 0, the failures of newer ones)."""
        failures = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                self.read_fully(step)
            except CheckpointDamagedError as e:
                failures.append(e)
                continue
            return step, failures
        return 0, failures

    @contextlib.contextmanager
    def _read_errors(self, step: int) -> Iterator[None]:
        """Any failure of orbax/tensorstore to read ``step`` becomes CheckpointDamagedError."""
        _quiet_closed_loop_noise()
        try:
            yield
        except (CheckpointDamagedError, CheckpointMismatchError):
            raise
        except Exception as e:
            raise CheckpointDamagedError(step, describe_read_error(e)) from e

    def restore(self, target: PyTree, step: int | None = None) -> tuple[PyTree, dict[str, Any]]:
        """Restores ``(state, meta)`` into the structure, shapes and shardings of ``target``.

        ``target`` is a tree of arrays or ``jax.ShapeDtypeStruct`` (with shardings).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        problems = describe_mismatch(self.signature(step), tree_signature(target))
        if problems:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory}/{step} does not match the model being restored: "
                + "; ".join(problems)
                + ". Use a new --workdir for a different model or config."
            )
        with self._read_errors(step):
            restored = self._mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=target,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    ),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        if self.checksums:
            verify_checksums(step, restored["state"], restored["meta"])
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        with self._write_errors(None):
            self._mgr.wait_until_finished()

    def close(self) -> None:
        with self._write_errors(None):
            self._mgr.wait_until_finished()
        self._mgr.close()


def load_numpy(directory: str, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a checkpoint as nested dicts of numpy arrays, without a target (for tools/tests).

    ``step=None`` takes the latest. Returns ``(state, meta)``.
    Raises CheckpointDamagedError if the step does not read completely.
    """
    ckpt = Checkpointer(directory, read_only=True, async_save=False, keep_best=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        return ckpt.read_fully(step)
    finally:
        ckpt.close()
