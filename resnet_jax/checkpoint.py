"""Checkpoints with orbax: keep the last k and the best by eval top-1, async, preemption-safe.

A checkpoint is a step directory ``<dir>/<step>/`` with two items: ``state`` (the TrainState:
step, params, optimizer state, BN statistics, RNG, loss scale) and ``meta`` (JSON: the resolved
config, the model name and the data position). Orbax writes each step into a temporary
directory and renames it only when every file (and, multi-host, every process) is done, so a
save interrupted by a kill is never listed by :meth:`Checkpointer.latest_step`; leftovers are
removed on the next start.

Restoring checks the saved tree (paths and shapes) against the target first and raises
:class:`CheckpointMismatchError` listing the differences, instead of a partial load.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from resnet_jax import fs

PyTree = Any


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model/config it is restored into."""


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
    ):
        # gs://... is passed to orbax unchanged: it reads and writes GCS itself (etils.epath).
        self.directory = fs.absolute(directory)
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
        """Starts saving ``state`` at ``step`` (returns once device arrays are copied)."""
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
        return self._mgr.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )["meta"]

    def signature(self, step: int) -> dict[str, tuple[int, ...]]:
        return tree_signature(self._mgr.item_metadata(step)["state"])

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
    """
    ckpt = Checkpointer(directory, read_only=True, async_save=False, keep_best=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    meta = ckpt.read_meta(step)
    md = ckpt._mgr.item_metadata(step)["state"]
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), md)
    state = ckpt._mgr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=md, restore_args=restore_args)
        ),
    )["state"]
    ckpt.close()
    return state, meta
